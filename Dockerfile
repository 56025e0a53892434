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

# The admin listener (/metrics, /healthz, /readyz) on the container's loopback, for the health
# check below; set KMS_ADMIN_LISTEN=0.0.0.0:9464 (and publish the port) to let Prometheus scrape
# it from outside. It has no authentication: keep it off untrusted networks.
ENV KMS_ADMIN_LISTEN=127.0.0.1:9464

USER node
# `kms run` answers the requests in flight, closes the store and exits 0 on SIGTERM. A stalled
# event loop ends it (SIGKILL, status 137, after a fatal "event-loop-stalled" log line, see
# KMS_STALL_EXIT_SEC): restart it with a restart policy (`--restart unless-stopped`).
STOPSIGNAL SIGTERM
# Healthy while the event loop turns (GET /healthz on the port of KMS_ADMIN_LISTEN). It needs the
# admin listener: an image run without one should turn the check off (`--no-healthcheck`).
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
  CMD ["node", "-e", "const p = (process.env.KMS_ADMIN_LISTEN || '').split(':').pop(); fetch('http://127.0.0.1:' + p + '/healthz', { signal: AbortSignal.timeout(4000) }).then((r) => process.exit(r.ok ? 0 : 1), () => process.exit(1))"]
ENTRYPOINT ["node", "bin/kms.js"]
CMD ["run"]
