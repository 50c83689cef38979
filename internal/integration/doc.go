// Package integration holds ConsentLine's cross-instance tests and
// benchmarks: several complete instances (consent.Service and the ivr
// router, wired as `consentline serve` wires them) in one test process,
// sharing nothing but a real PostgreSQL database and a real Redis, driven by
// signed Twilio webhooks, with faults injected between the instances and
// those servers by internal/faultproxy.
//
// The package has no code of its own; everything is in its _test.go files:
//
//	go test -race ./internal/integration                      # tests
//	go test ./internal/integration -run '^$' -bench Decisions  # benchmarks
//
// PostgreSQL and Redis come from internal/testdb (TEST_DATABASE_URL,
// TEST_REDIS_URL; by default the servers on 127.0.0.1). Without them the
// tests skip, except under CI=true where they fail.
package integration
