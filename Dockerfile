# Builds the coordinator and worker into one small image:
#   docker build -t ringmaster:0.1.0 --build-arg VERSION=v0.1.0 .
# Without Docker, the same image: cd deploy/image && go run . --out ringmaster.tar
# (docs/install.md). Both lay out the same files, owners and modes, because
# this build stage runs that program to write the file system; the config
# below must say what deploy/image/image.go says, and deploy/image's tests
# check that it does.
FROM --platform=$BUILDPLATFORM golang:1.26 AS build
# Set by BuildKit (docker build --platform); the legacy builder leaves
# them empty, and linux/amd64 is assumed.
ARG TARGETOS
ARG TARGETARCH
ARG VERSION=v0.1.0-dev
# File times; BuildKit also passes it to the exporter when set.
ARG SOURCE_DATE_EPOCH=0
WORKDIR /src
COPY go.mod go.sum ./
COPY deploy/image/go.mod deploy/image/go.sum ./deploy/image/
RUN go mod download && cd deploy/image && go mod download
COPY . .
RUN cd deploy/image && go run . --rootfs /rootfs \
      --platform "${TARGETOS:-linux}/${TARGETARCH:-amd64}" --version "$VERSION" --source-date-epoch "$SOURCE_DATE_EPOCH"

FROM scratch
# COPY --from keeps the owners (65532 on the writable directories) and
# modes (1777 on /tmp) that --rootfs set.
COPY --from=build /rootfs/ /
ARG VERSION=v0.1.0-dev
ARG REVISION=
LABEL org.opencontainers.image.source="https://github.com/ringmaster/ringmaster" \
      org.opencontainers.image.version="$VERSION" \
      org.opencontainers.image.revision="$REVISION"
USER 65532:65532
WORKDIR /home/nonroot
ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
ENV SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt
# The workers find MNIST here; the module cache does not exist in the image.
ENV RINGMASTER_MNIST_DIR=/usr/share/ringmaster/mnist
ENTRYPOINT ["/usr/local/bin/coordinator"]
