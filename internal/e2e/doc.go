// Package e2e holds ConsentLine's end-to-end tests and benchmarks of the
// relay (issue #4): decisions taken through the real call flow or
// consent.Service, stored on a real database with the outbox, and delivered
// by River to a local catch hook (an httptest server standing in for
// Zapier), and the operator commands run as the real binary; and
// TestLogsCarryNoPHI, whole calls against a real `consentline serve` whose
// every written byte is checked for the callers' numbers and words.
//
// The package has no code of its own; everything is in its _test.go files:
//
//	go test -race ./internal/e2e                                    # tests
//	go test ./internal/e2e -run '^$' -bench DecisionToDelivery      # benchmarks
//
// Tests that run `consentline` build it once per test run (go build into a
// temporary directory) and start it as a subprocess, which they SIGKILL and
// restart where the test says so; every subprocess is killed in t.Cleanup.
//
// PostgreSQL comes from internal/testdb (TEST_DATABASE_URL; by default the
// server on 127.0.0.1:5432). Without it the PostgreSQL tests skip, except
// under CI=true where they fail.
package e2e
