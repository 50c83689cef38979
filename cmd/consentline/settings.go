package main

import (
	"fmt"
	"net/url"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/consentline/consentline/consent"
	"github.com/consentline/consentline/internal/pii"
	"github.com/consentline/consentline/relay"
	"github.com/consentline/consentline/twiml"
)

// settings are ConsentLine's environment variables (CONTRACT.md §2), parsed
// and checked once at start.
type settings struct {
	Port          int
	PublicBaseURL string
	AccountSID    string
	AuthToken     string
	Keys          *pii.Keyring

	ZapierWebhookURL string
	RelayPII         relay.PIIMode
	RelaySigner      *relay.Signer // set with ZapierWebhookURL
	RelayRescueAfter time.Duration // 0: relay.DefaultRescueAfter
	RelayRateLimit   float64       // requests per second to the hook

	// AuditSigner is AUDIT_SIGNING_KEY's; nil: the key generated once and
	// stored sealed in the database (auditSigner).
	AuditSigner *relay.AuditSigner

	DatabaseURL string
	RedisURL    string
	DataDir     string

	Threshold      float64
	Scripts        *twiml.Library
	DeepgramAPIKey string
	// DeepgramURL overrides Deepgram's live endpoint (a self-hosted
	// Deepgram, or a stand-in in tests); empty: Deepgram's cloud.
	DeepgramURL string
	// MediaStreams: start a media stream before each disclosure (on by
	// default; MEDIA_STREAMS=off turns it off).
	MediaStreams bool

	// MetricsToken is METRICS_TOKEN: when set, /metrics wants it as a
	// bearer token.
	MetricsToken string
}

// settingError is one line naming the setting and how to make it right.
type settingError struct{ name, fix string }

func (e *settingError) Error() string { return e.name + " " + e.fix }

// badSettings marks any error from loadSettings (some come from the
// packages that parse a setting, already naming it) so the command exits
// with the usage status.
type badSettings struct{ error }

func (e badSettings) Unwrap() error { return e.error }

var accountSIDPattern = regexp.MustCompile(`^AC[0-9a-fA-F]{32}$`)

// metricsTokenPattern is a bearer token's characters (RFC 6750's b64token),
// at a length worth guessing nothing from.
var metricsTokenPattern = regexp.MustCompile(`^[A-Za-z0-9\-._~+/]{16,}=*$`)

// loadSettings reads every setting serve needs and returns the first
// problem as one line. Values are never echoed: several are secrets.
func loadSettings(getenv func(string) string) (*settings, error) {
	s := &settings{
		DatabaseURL:    strings.TrimSpace(getenv("DATABASE_URL")),
		RedisURL:       strings.TrimSpace(getenv("REDIS_URL")),
		DataDir:        orDefault(getenv("DATA_DIR"), "./data"),
		DeepgramAPIKey: strings.TrimSpace(getenv("DEEPGRAM_API_KEY")),
		DeepgramURL:    strings.TrimSpace(getenv("DEEPGRAM_URL")),
		MetricsToken:   getenv("METRICS_TOKEN"),
	}
	if s.MetricsToken != "" && !metricsTokenPattern.MatchString(s.MetricsToken) {
		return nil, &settingError{"METRICS_TOKEN", "is malformed: want at least 16 characters from A-Z a-z 0-9 - . _ ~ + / = (make one with: openssl rand -hex 32)"}
	}
	switch strings.ToLower(strings.TrimSpace(getenv("MEDIA_STREAMS"))) {
	case "", "on", "true", "1":
		s.MediaStreams = true
	case "off", "false", "0":
	default:
		return nil, &settingError{"MEDIA_STREAMS", "must be on (the default: measure each call's barge-in on a media stream) or off"}
	}
	if s.DeepgramURL != "" && !strings.HasPrefix(s.DeepgramURL, "wss://") && !strings.HasPrefix(s.DeepgramURL, "ws://") {
		return nil, &settingError{"DEEPGRAM_URL", "must be a wss:// URL of Deepgram's live API, or empty for Deepgram's cloud"}
	}

	port, err := strconv.Atoi(orDefault(getenv("PORT"), "8080"))
	if err != nil || port < 1 || port > 65535 {
		return nil, &settingError{"PORT", "must be a TCP port number from 1 to 65535 (Railway sets it for you)"}
	}
	s.Port = port

	s.PublicBaseURL = strings.TrimRight(strings.TrimSpace(getenv("PUBLIC_BASE_URL")), "/")
	if s.PublicBaseURL == "" {
		return nil, &settingError{"PUBLIC_BASE_URL", "is required: the https URL Twilio reaches this service at, e.g. https://consent.up.railway.app"}
	}
	if u, err := url.Parse(s.PublicBaseURL); err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" || u.RawQuery != "" || u.Fragment != "" {
		return nil, &settingError{"PUBLIC_BASE_URL", "must be an absolute http(s) URL without query, e.g. https://consent.up.railway.app"}
	}

	s.AccountSID = strings.TrimSpace(getenv("TWILIO_ACCOUNT_SID"))
	if !accountSIDPattern.MatchString(s.AccountSID) {
		return nil, &settingError{"TWILIO_ACCOUNT_SID", "must be your Twilio Account SID (AC followed by 32 hex characters), from the Twilio Console home page"}
	}
	s.AuthToken = strings.TrimSpace(getenv("TWILIO_AUTH_TOKEN"))
	if s.AuthToken == "" {
		return nil, &settingError{"TWILIO_AUTH_TOKEN", "is required: your Twilio Auth Token, from the Twilio Console home page (it signs every webhook)"}
	}

	if s.Keys, err = pii.ParseKeyring(strings.TrimSpace(getenv("ENCRYPTION_KEY")), getenv("ENCRYPTION_KEYS_RETIRED")); err != nil {
		return nil, err
	}

	if err := s.loadRelay(getenv); err != nil {
		return nil, err
	}
	if s.AuditSigner, err = relay.ParseAuditSigningKey(getenv("AUDIT_SIGNING_KEY")); err != nil {
		return nil, err
	}

	if s.DatabaseURL != "" && !strings.HasPrefix(s.DatabaseURL, "postgres://") && !strings.HasPrefix(s.DatabaseURL, "postgresql://") {
		return nil, &settingError{"DATABASE_URL", "must be a postgres:// URL (Railway's PostgreSQL exposes one), or empty for the embedded database in DATA_DIR"}
	}
	if s.RedisURL != "" && !strings.HasPrefix(s.RedisURL, "redis://") && !strings.HasPrefix(s.RedisURL, "rediss://") {
		return nil, &settingError{"REDIS_URL", "must be a redis:// or rediss:// URL (Railway's Redis exposes one), or empty for an in-process lock (one instance only)"}
	}

	s.Threshold = consent.DefaultThreshold
	if v := strings.TrimSpace(getenv("CONSENT_CONFIDENCE_THRESHOLD")); v != "" {
		t, err := strconv.ParseFloat(v, 64)
		if err != nil || t <= 0 || t > 1 {
			return nil, &settingError{"CONSENT_CONFIDENCE_THRESHOLD", "must be a number greater than 0 and at most 1, e.g. 0.75"}
		}
		s.Threshold = t
	}

	if s.Scripts, err = loadScripts(getenv("DISCLOSURE_FILE")); err != nil {
		return nil, err
	}
	return s, nil
}

// loadRelay reads the relay's settings. RELAY_PII and RELAY_SIGNING_SECRET
// are checked by the relay package's own parsers, the ones its Config is
// checked with, so the two can never disagree on what is valid.
func (s *settings) loadRelay(getenv func(string) string) error {
	var err error
	if s.RelayPII, err = relay.ParsePIIMode(getenv("RELAY_PII")); err != nil {
		return err
	}
	if v := strings.TrimSpace(getenv("RELAY_RESCUE_AFTER")); v != "" {
		d, err := time.ParseDuration(v)
		if floor := relay.JobTimeout(0); err != nil || d <= floor {
			return &settingError{"RELAY_RESCUE_AFTER", fmt.Sprintf("must be a duration longer than %s (a delivery's timeout), e.g. 30s, or empty for the default %s", floor, relay.DefaultRescueAfter(0))}
		}
		s.RelayRescueAfter = d
	}
	s.RelayRateLimit = relay.DefaultRateLimit
	if v := strings.TrimSpace(getenv("RELAY_RATE_LIMIT")); v != "" {
		r, err := strconv.ParseFloat(v, 64)
		if err != nil || !(r > 0) || r > relay.MaxRateLimit {
			return &settingError{"RELAY_RATE_LIMIT", fmt.Sprintf("must be a number of requests per second greater than 0 and at most %d, e.g. 30 (Zapier allows 10,000 per 5 minutes per hook; divide by the number of instances)", relay.MaxRateLimit)}
		}
		s.RelayRateLimit = r
	}
	s.ZapierWebhookURL = strings.TrimSpace(getenv("ZAPIER_WEBHOOK_URL"))
	if s.ZapierWebhookURL == "" {
		return nil
	}
	if u, err := url.Parse(s.ZapierWebhookURL); err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" {
		return &settingError{"ZAPIER_WEBHOOK_URL", "must be your Zap's Catch Hook URL (https://hooks.zapier.com/hooks/catch/...), or empty to turn the relay to Zapier off"}
	}
	s.RelaySigner, err = relay.ParseSigningSecret(getenv("RELAY_SIGNING_SECRET"))
	return err
}

// loadScripts returns the built-in disclosure or the clinic's file.
func loadScripts(path string) (*twiml.Library, error) {
	if strings.TrimSpace(path) == "" {
		return twiml.Builtin(), nil
	}
	lib, err := twiml.Load(path)
	if err != nil {
		return nil, fmt.Errorf("DISCLOSURE_FILE: %w", err)
	}
	return lib, nil
}

func orDefault(v, def string) string {
	if v = strings.TrimSpace(v); v != "" {
		return v
	}
	return def
}
