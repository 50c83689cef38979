package main

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/consentline/consentline/relay"
)

// validEnv is a complete, well-formed serve configuration.
func validEnv() map[string]string {
	return map[string]string{
		"PUBLIC_BASE_URL":    "https://consent.example.com",
		"TWILIO_ACCOUNT_SID": "AC0123456789abcdef0123456789abcdef",
		"TWILIO_AUTH_TOKEN":  "0123456789abcdef0123456789abcdef",
		"ENCRYPTION_KEY":     strings.Repeat("ab", 32),
	}
}

func getenv(env map[string]string) func(string) string {
	return func(k string) string { return env[k] }
}

func TestSettingsErrors(t *testing.T) {
	cases := []struct {
		name    string
		change  map[string]string
		mention string
	}{
		{"no public URL", map[string]string{"PUBLIC_BASE_URL": ""}, "PUBLIC_BASE_URL is required"},
		{"relative public URL", map[string]string{"PUBLIC_BASE_URL": "consent.example.com"}, "PUBLIC_BASE_URL must be an absolute"},
		{"no account SID", map[string]string{"TWILIO_ACCOUNT_SID": ""}, "TWILIO_ACCOUNT_SID"},
		{"bad account SID", map[string]string{"TWILIO_ACCOUNT_SID": "SK123"}, "TWILIO_ACCOUNT_SID"},
		{"no auth token", map[string]string{"TWILIO_AUTH_TOKEN": ""}, "TWILIO_AUTH_TOKEN is required"},
		{"no key", map[string]string{"ENCRYPTION_KEY": ""}, "openssl rand -hex 32"},
		{"short key", map[string]string{"ENCRYPTION_KEY": "abcdef"}, "ENCRYPTION_KEY is malformed"},
		{"bad retired key", map[string]string{"ENCRYPTION_KEYS_RETIRED": strings.Repeat("ab", 32) + ",zz"}, "ENCRYPTION_KEYS_RETIRED entry 2"},
		{"bad port", map[string]string{"PORT": "http"}, "PORT"},
		{"bad threshold", map[string]string{"CONSENT_CONFIDENCE_THRESHOLD": "1.5"}, "CONSENT_CONFIDENCE_THRESHOLD"},
		{"bad RELAY_PII", map[string]string{"RELAY_PII": "plain"}, "RELAY_PII must be encrypted (PII fields sent as JWE), omit (no PII fields at all), or empty"},
		{"short RELAY_RESCUE_AFTER", map[string]string{"RELAY_RESCUE_AFTER": "10s"}, "RELAY_RESCUE_AFTER must be a duration longer than 15s"},
		{"zero RELAY_RATE_LIMIT", map[string]string{"RELAY_RATE_LIMIT": "0"}, "RELAY_RATE_LIMIT must be a number of requests per second greater than 0"},
		{"NaN RELAY_RATE_LIMIT", map[string]string{"RELAY_RATE_LIMIT": "NaN"}, "RELAY_RATE_LIMIT must be"},
		{"huge RELAY_RATE_LIMIT", map[string]string{"RELAY_RATE_LIMIT": "30000"}, "at most 1000"},
		{"zapier without secret", map[string]string{"ZAPIER_WEBHOOK_URL": "https://hooks.zapier.com/hooks/catch/1/abc/"}, "RELAY_SIGNING_SECRET is required"},
		// 16 bytes: what relay.ParseSigningSecret used to accept while the
		// settings wanted 24; now one check, Standard Webhooks' 24.
		{"short secret", map[string]string{"ZAPIER_WEBHOOK_URL": "https://hooks.zapier.com/hooks/catch/1/abc/", "RELAY_SIGNING_SECRET": "whsec_c2hvcnQta2V5LW9mLTE4Yg=="},
			"RELAY_SIGNING_SECRET is malformed: want at least 24 bytes after whsec_, got 16 (make one with: echo whsec_$(openssl rand -base64 32))"},
		{"secret without whsec_", map[string]string{"ZAPIER_WEBHOOK_URL": "https://hooks.zapier.com/hooks/catch/1/abc/", "RELAY_SIGNING_SECRET": "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"},
			"RELAY_SIGNING_SECRET is malformed: want whsec_ followed by base64"},
		{"mysql URL", map[string]string{"DATABASE_URL": "mysql://x"}, "DATABASE_URL must be a postgres://"},
		{"bad redis URL", map[string]string{"REDIS_URL": "127.0.0.1:6379"}, "REDIS_URL"},
		{"audit key not base64", map[string]string{"AUDIT_SIGNING_KEY": "not-base64-at-all!"}, "AUDIT_SIGNING_KEY is malformed: not base64 (make one with: openssl rand -base64 32)"},
		{"short audit key", map[string]string{"AUDIT_SIGNING_KEY": "c2hvcnQta2V5LW9mLTE4Yg=="}, "AUDIT_SIGNING_KEY is malformed: want base64 of a 32-byte Ed25519 seed, got 16 bytes (make one with: openssl rand -base64 32)"},
		{"short metrics token", map[string]string{"METRICS_TOKEN": "abc"}, "METRICS_TOKEN is malformed"},
		{"metrics token with a space", map[string]string{"METRICS_TOKEN": "0123456789 abcdef0123"}, "METRICS_TOKEN is malformed"},
		{"missing disclosure file", map[string]string{"DISCLOSURE_FILE": "/nonexistent/scripts.yaml"}, "DISCLOSURE_FILE"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			env := validEnv()
			for k, v := range tc.change {
				env[k] = v
			}
			var stdout, stderr bytes.Buffer
			code := run(context.Background(), []string{"serve"}, getenv(env), &stdout, &stderr)
			if code != exitUsage {
				t.Errorf("exit %d, want %d", code, exitUsage)
			}
			msg := stderr.String()
			if strings.Count(msg, "\n") != 1 || !strings.Contains(msg, tc.mention) {
				t.Errorf("stderr = %q, want one line mentioning %q", msg, tc.mention)
			}
			for _, v := range tc.change {
				if len(v) > 8 && strings.Contains(msg, v) && !strings.HasPrefix(v, "/") {
					t.Errorf("the error echoes the value %q", v)
				}
			}
		})
	}
}

func TestSettingsValid(t *testing.T) {
	env := validEnv()
	env["ZAPIER_WEBHOOK_URL"] = "https://hooks.zapier.com/hooks/catch/1/abc/"
	env["RELAY_SIGNING_SECRET"] = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
	env["RELAY_PII"] = "omit"
	env["CONSENT_CONFIDENCE_THRESHOLD"] = "0.6"
	s, err := loadSettings(getenv(env))
	if err != nil {
		t.Fatal(err)
	}
	if s.Port != 8080 || s.DataDir != "./data" || s.RelayPII != relay.PIIOmit || s.RelaySigner == nil || s.Threshold != 0.6 || s.Scripts.Default() == nil {
		t.Errorf("settings = %+v", s)
	}
}

// The README's run command: a whole call with its media stream, one record
// with measured timings, exit 0.
func TestDemo(t *testing.T) {
	t.Setenv("TMPDIR", t.TempDir())
	var stdout, stderr bytes.Buffer
	if code := run(context.Background(), []string{"demo"}, os.Getenv, &stdout, &stderr); code != 0 {
		t.Fatalf("demo exit %d: %s\n%s", code, stderr.String(), stdout.String())
	}
	out := stdout.String()
	for _, want := range []*regexp.Regexp{
		regexp.MustCompile(`decision\s+granted`),
		regexp.MustCompile(`source\s+speech\b`),
		regexp.MustCompile(`barge_in\s+true`),
		regexp.MustCompile(`must_hear_complete\s+true`),
		regexp.MustCompile(`timing\s+measured`),
		// The generated answer starts 5230 ms into the stream, the
		// disclosure 300 ms: 4930 ms heard, measured to a frame or two.
		regexp.MustCompile(`disclosure_heard_ms\s+49[0-9]{2}\b`),
		regexp.MustCompile(`answer's audio, [0-9.]+ s, is stored sealed`),
		regexp.MustCompile(`transcript \(DECRYPTED PII\)\s+yes I agree`),
		regexp.MustCompile(`must hear`),
		regexp.MustCompile(`hangs up`),
	} {
		if !want.MatchString(out) {
			t.Errorf("demo output lacks %s:\n%s", want, out)
		}
	}
	// The throwaway directory is removed.
	if left, _ := filepath.Glob(filepath.Join(os.Getenv("TMPDIR"), "consentline-demo-*")); len(left) != 0 {
		t.Errorf("demo left %v behind", left)
	}
}

func TestUnknownCommand(t *testing.T) {
	var stdout, stderr bytes.Buffer
	if code := run(context.Background(), []string{"frobnicate"}, getenv(nil), &stdout, &stderr); code != exitUsage || !strings.Contains(stderr.String(), "unknown command") {
		t.Errorf("exit %d, stderr %q", code, stderr.String())
	}
}

// serve starts on the embedded database, answers /readyz, and shuts down
// cleanly when its context ends (SIGTERM on Railway).
func TestServeStartsAndStops(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := ln.Addr().(*net.TCPAddr).Port
	ln.Close()
	env := validEnv()
	env["PORT"] = strconv.Itoa(port)
	env["DATA_DIR"] = t.TempDir()

	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan int, 1)
	var stdout, stderr bytes.Buffer
	go func() { done <- run(ctx, []string{"serve"}, getenv(env), &stdout, &stderr) }()

	var status int
	for range 100 {
		resp, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d/readyz", port))
		if err == nil {
			status = resp.StatusCode
			resp.Body.Close()
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	cancel()
	if code := <-done; code != 0 {
		t.Fatalf("serve exit %d: %s", code, stderr.String())
	}
	if status != http.StatusOK {
		t.Fatalf("/readyz = %d", status)
	}
	if !strings.Contains(stdout.String(), `"audit_key_id":`) {
		t.Errorf("serve did not log its audit signing key id: %s", stdout.String())
	}
	if _, err := os.Stat(filepath.Join(env["DATA_DIR"], "consentline.db")); err != nil {
		t.Errorf("no embedded database in DATA_DIR: %v", err)
	}
}
