# ConsentLine's image: one static binary on a minimal, non-root base. Railway
# (railway.toml), Fly, Kubernetes and a plain `docker run` build this same
# file. internal/e2e's TestImageBuildIsStatic runs the `go build` line below
# exactly as written (only its -o path changes), so keep it on one line.

FROM golang:1.26 AS build
WORKDIR /src
# Modules first: a change to the code alone reuses this layer.
COPY go.mod go.sum ./
RUN go mod download
COPY . .
# Pure Go (SQLite is modernc.org/sqlite), so no C toolchain and no libc.
RUN CGO_ENABLED=0 go build -trimpath -ldflags='-s -w' -o /out/consentline ./cmd/consentline
# DATA_DIR, owned by the runtime user (distroless's nonroot, uid 65532).
RUN mkdir -p /out/data

# No shell, no package manager, no libc; CA certificates and tzdata only.
FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/consentline /usr/local/bin/consentline
COPY --from=build --chown=65532:65532 /out/data /data
# The embedded database lives here: mount a volume (docker run -v, a
# Railway volume, a Kubernetes PersistentVolumeClaim) to keep it.
ENV DATA_DIR=/data
VOLUME /data
# PORT defaults to 8080; Railway sets its own.
EXPOSE 8080
USER nonroot:nonroot
# Exec form: the binary is PID 1 and gets SIGTERM itself, which starts its
# drain (see serve.go).
ENTRYPOINT ["/usr/local/bin/consentline"]
CMD ["serve"]
