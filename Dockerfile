# UNTESTED: the machines this project is developed and tested on have no Docker engine, so this
# image has never been built. It follows what scripts/up.sh does by hand; report what breaks.
#
# The KMS component: `node bin/kms.js run`, the built JavaScript (dist/, `npm run build`).
# Configure it with KMS_* variables (`docker run --rm IMAGE run --help` lists them); see
# docker-compose.yml for a complete setup next to Prosody.
FROM node:20-bookworm-slim AS build
WORKDIR /build
COPY package.json package-lock.json ./
RUN npm ci --no-audit --no-fund
COPY tsconfig.json tsconfig.build.json ./
COPY types ./types
COPY src ./src
RUN npm run build

FROM node:20-bookworm-slim

WORKDIR /app
ENV NODE_ENV=production

# Dependencies first, for the layer cache. classic-level (LevelDB) ships prebuilt glibc binaries.
COPY package.json package-lock.json ./
RUN npm ci --omit=dev --no-audit --no-fund && npm cache clean --force

# No src/ in the image: bin/kms.js runs dist/ (it runs the sources only in a checkout).
COPY bin/kms.js ./bin/kms.js
COPY --from=build /build/dist ./dist

# LevelDB store, sealed identity, local token issuer and trust anchor: keep them on a volume.
RUN mkdir -p /var/lib/kms && chown node:node /var/lib/kms
ENV KMS_DATA_DIR=/var/lib/kms
VOLUME ["/var/lib/kms"]

USER node
# `kms run` answers the requests in flight, closes the store and exits 0 on SIGTERM.
STOPSIGNAL SIGTERM
ENTRYPOINT ["node", "bin/kms.js"]
CMD ["run"]
