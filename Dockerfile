# syntax=docker/dockerfile:1
# The operator image: `chainwarden operator` in the Deployment and `chainwarden agent` as the
# sidecar of agent pods. Build: docker build -t chainwarden/chainwarden:0.1.0 .

FROM node:22-alpine AS build
WORKDIR /src
COPY package.json package-lock.json .npmrc ./
RUN npm ci --ignore-scripts
COPY tsconfig.json tsconfig.build.json ./
COPY src ./src
RUN npm run build && npm prune --omit=dev

FROM node:22-alpine
# jemalloc instead of musl's allocator: it gives freed memory back to the system within seconds,
# so the operator's and the sidecar's resident size follow what they hold (`npm run bench`
# measures with the same library and settings).
RUN apk add --no-cache jemalloc
ENV NODE_ENV=production \
    LD_PRELOAD=/usr/lib/libjemalloc.so.2 \
    MALLOC_CONF=background_thread:true,dirty_decay_ms:5000,muzzy_decay_ms:0
WORKDIR /app
COPY --from=build /src/node_modules ./node_modules
COPY --from=build /src/dist ./dist
COPY package.json ./
COPY bin ./bin
COPY crds ./crds
USER 65532:65532
EXPOSE 8443
ENTRYPOINT ["node", "/app/bin/chainwarden.js"]
CMD ["operator"]
