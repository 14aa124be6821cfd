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
ENV NODE_ENV=production
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
