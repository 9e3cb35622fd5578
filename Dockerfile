# kms_exporter: a static binary on a minimal, non-root base with CA certificates.
#
#   docker build -t kms_exporter --build-arg VERSION=$(git describe --tags --always) .
#   docker run -p 10863:10863 -e AWS_REGION=eu-west-1 kms_exporter
#
# GO_IMAGE and BASE_IMAGE can be replaced by equivalent images built locally
# (the tests do so, on a machine without a registry).
ARG GO_IMAGE=golang:1.26-bookworm
ARG BASE_IMAGE=gcr.io/distroless/static-debian12:nonroot

FROM ${GO_IMAGE} AS build
WORKDIR /src
ENV CGO_ENABLED=0 GOTOOLCHAIN=local
# Modules are downloaded unless the context carries a vendor/ folder.
COPY . .
ARG VERSION=dev
ARG REVISION=unknown
ARG BRANCH=unknown
RUN set -e; [ -d vendor ] || go mod download; \
    v=github.com/prometheus/common/version; \
    go build -trimpath -o /out/kms_exporter \
      -ldflags "-s -w -X $v.Version=${VERSION} -X $v.Revision=${REVISION} -X $v.Branch=${BRANCH} -X $v.BuildUser=docker" .

FROM ${BASE_IMAGE}
COPY --from=build /out/kms_exporter /bin/kms_exporter
# nobody: no shell, no home, read-only root file system friendly.
USER 65534:65534
EXPOSE 10863
ENTRYPOINT ["/bin/kms_exporter"]
