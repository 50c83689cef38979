package main

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"strings"
	"time"

	"github.com/consentline/consentline/consent"
	"github.com/consentline/consentline/internal/democall"
	"github.com/consentline/consentline/internal/pii"
	"github.com/consentline/consentline/internal/telemetry"
	"github.com/consentline/consentline/ivr"
	"github.com/consentline/consentline/ivr/twiliosim"
	"github.com/consentline/consentline/relay"
	"github.com/consentline/consentline/twiml"
)

// demo starts a real server on the embedded database in a temporary
// directory with throwaway credentials, plays one whole call against it the
// way Twilio would (signed form posts, following the TwiML's URLs), with a
// caller who interrupts the disclosure to say "yes I agree", and prints the
// conversation and the one stored record. The server's own log — an
// access line per webhook, the decision — goes to stderr as text.
func demo(ctx context.Context, stdout, stderr io.Writer) error {
	dir, err := os.MkdirTemp("", "consentline-demo-*")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)

	keys, err := pii.NewKeyring(randomBytes(32))
	if err != nil {
		return err
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	base := "http://" + ln.Addr().String()
	s := &settings{
		PublicBaseURL: base,
		AccountSID:    "AC" + hex.EncodeToString(randomBytes(16)),
		AuthToken:     hex.EncodeToString(randomBytes(16)),
		Keys:          keys,
		DataDir:       dir,
		Threshold:     consent.DefaultThreshold,
		Scripts:       twiml.Builtin(),
	}
	outbox := &outboxSettings{keys: keys}
	metrics := telemetry.New()
	b, err := openBackends(ctx, "", "", dir, outbox, metrics)
	if err != nil {
		return err
	}
	defer b.close()
	log := slog.New(slog.NewTextHandler(stderr, nil))
	cfg, rel, err := newApp(ctx, s, b, log)
	if err != nil {
		return err
	}
	s.MediaStreams = true
	cfg.MediaStreams = true
	app := ivr.New(cfg)
	streams, err := mountStreams(app, cfg, s, log, metrics)
	if err != nil {
		return err
	}
	defer streams.Close()
	srv := &http.Server{Handler: telemetry.Serve(app.Router(), log, metrics, ""), ErrorLog: httpErrorLog(log), ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = srv.Serve(ln) }()
	defer srv.Close()

	p := &printer{w: stdout}
	p.f("ConsentLine demo: a server on the embedded database at %s (data in %s),\n", base, dir)
	p.f("and a simulated Twilio playing one call against it: signed webhooks, and the call's audio\n")
	p.f("on a media stream at real time (about 8 s; synthetic sound, generated for the demo).\n\n")

	tw := &twiliosim.Twilio{PublicBaseURL: base, Target: base, AuthToken: s.AuthToken, AccountSID: s.AccountSID}
	call := &twiliosim.Call{Twilio: tw, SID: "CA" + hex.EncodeToString(randomBytes(16)), From: "+14155550123", To: "+18005550199"}

	p.f("☎  Twilio → POST /voice/incoming (call %s)\n", call.SID)
	resp, err := call.TwiML(ctx, base+ivr.PathIncoming, call.Params(url.Values{"CallStatus": {"ringing"}}))
	if err != nil {
		return err
	}
	p.spoken(resp)
	stream, ok := resp.Find("Stream")
	mustHear, ok2 := resp.Find("Redirect")
	if !ok || !ok2 {
		return errors.New("the incoming TwiML starts no media stream")
	}

	// Twilio opens the stream before the disclosure's first <Say> and sends
	// both tracks, 20 ms at a time: what the caller hears (the disclosure)
	// and what their line sends back (its echo, then the caller talking
	// over it).
	audio := democall.Generate()
	params := map[string]string{}
	for _, prm := range stream.Children {
		params[prm.Attr("name")] = prm.Attr("value")
	}
	started := time.Now()
	played := make(chan error, 1)
	go func() {
		_, err := tw.Stream(ctx, stream.Attr("url"), twiliosim.StreamPlay{CallSID: call.SID, CustomParameters: params,
			Inbound: audio.Inbound, Outbound: audio.Outbound, Realtime: true, StopAfter: 7200 / 20})
		played <- err
	}()
	p.f("\n🎧 Twilio ⇄ wss %s (both tracks, real time)\n", pathOf(strings.Replace(stream.Attr("url"), "wss://", "https://", 1)))

	// The must-hear part has played: Twilio follows the <Redirect> after it,
	// and that request marks the moment.
	time.Sleep(time.Until(started.Add(3 * time.Second)))
	p.f("   Twilio → POST %s (the must-hear part has played)\n", pathOf(mustHear.Text))
	resp, err = call.TwiML(ctx, mustHear.Text, call.Params(nil))
	if err != nil {
		return err
	}
	p.spoken(resp)
	gather, ok := resp.SpeechGather()
	if !ok {
		return errors.New("the must-hear redirect has no speech <Gather>")
	}

	time.Sleep(time.Until(started.Add(time.Duration(audio.CallerOnsetMS+400) * time.Millisecond)))
	p.f("\n🗣  Caller (talking over the disclosure, %.2f s into the stream): \"yes I agree\"\n", float64(audio.CallerOnsetMS)/1000)
	for _, partial := range []struct{ text, stability string }{{"yes", "0.40"}, {"yes I agree", "0.90"}} {
		status, _, err := tw.Post(ctx, gather.Attr("partialResultCallback"), call.Params(url.Values{
			"UnstableSpeechResult": {partial.text}, "Stability": {partial.stability}, "SequenceNumber": {"1"},
		}))
		if err != nil {
			return err
		}
		p.f("   Twilio → POST %s (partial %q, stability %s) ← %d: a partial never decides\n", pathOf(gather.Attr("partialResultCallback")), partial.text, partial.stability, status)
	}
	if err := <-played; err != nil {
		return fmt.Errorf("playing the media stream: %w", err)
	}
	p.f("   Twilio → POST %s (final SpeechResult, Confidence 0.94)\n", pathOf(gather.Attr("action")))
	resp, err = call.TwiML(ctx, gather.Attr("action"), call.Params(url.Values{
		"SpeechResult": {"yes I agree"}, "Confidence": {"0.94"},
	}))
	if err != nil {
		return err
	}
	p.spoken(resp)
	if !resp.HangsUp() {
		return errors.New("the read-back does not end the call")
	}
	script := s.Scripts.Default()

	status, _, err := tw.Post(ctx, base+ivr.PathStatus, call.Params(url.Values{"CallStatus": {"completed"}, "CallDuration": {"41"}}))
	if err != nil {
		return err
	}
	p.f("\n☎  Twilio → POST /voice/status (completed) ← %d\n", status)

	rec, err := b.store.Get(ctx, call.SID, script.ID)
	if err != nil {
		return fmt.Errorf("reading the record back: %w", err)
	}
	p.record(rec, keys)
	evidence, err := cfg.Consent.Evidence(ctx, call.SID)
	if err != nil {
		return err
	}
	for _, e := range evidence {
		m := e.Measurement
		p.f("\nMeasured on the media stream (true onsets of the generated audio: disclosure %d ms, caller %d ms):\n", audio.PromptOnsetMS, audio.CallerOnsetMS)
		p.f("  disclosure speech began %d ms into the stream; the caller's answer %d–%d ms (echo of the disclosure ignored)\n", m.PromptOnsetMS, m.AnswerOnsetMS, m.AnswerEndMS)
		p.f("  the answer's audio, %.2f s, is stored sealed beside the record: consentline evidence %s --out answer.wav\n", float64(len(e.Audio))/8000, call.SID)
	}

	// The same transaction wrote the relay event to the audit log (and,
	// with ZAPIER_WEBHOOK_URL set, queued its delivery).
	entry, err := rel.Event(ctx, rec.ID)
	if err != nil {
		return fmt.Errorf("reading the audit entry: %w", err)
	}
	var event bytes.Buffer
	if err := json.Indent(&event, entry.Event, "  ", "  "); err != nil {
		return err
	}
	p.f("\nIts relay event, as the Zapier catch hook and the audit log get it (PII as JWE):\n  %s\n", event.String())
	// Sign the chain head, as serve's checkpoint loop does, and verify the
	// log against the signature.
	signer, _, err := auditSigner(ctx, nil, b.store, keys)
	if err != nil {
		return err
	}
	checkpoints, err := rel.Checkpointer(signer, relay.CheckpointPolicy{})
	if err != nil {
		return err
	}
	signed, err := checkpoints.Checkpoint(ctx)
	if err != nil {
		return err
	}
	verified, err := rel.VerifyAuditSigned(ctx, relay.VerifyOptions{TrustedKeys: []ed25519.PublicKey{signer.PublicKey()}})
	if err != nil {
		return err
	}
	p.f("\nAudit chain verified: %d entries (consent and call.completed), head %s\n", verified.Entries, verified.Head)
	for _, cp := range signed {
		p.f("Signed checkpoint: chain %d seq %d hash %s at %s, Ed25519 key %s, signature %s\n",
			cp.Chain, cp.Seq, cp.Hash, cp.SignedAt, cp.KeyID, cp.Signature)
	}
	return p.err
}

// printer writes the conversation, keeping the first write error.
type printer struct {
	w   io.Writer
	err error
}

func (p *printer) f(format string, args ...any) {
	if p.err == nil {
		_, p.err = fmt.Fprintf(p.w, format, args...)
	}
}

func (p *printer) spoken(resp *twiliosim.Response) {
	for _, said := range resp.Spoken() {
		mark := "must hear    "
		if said.Interruptible {
			mark = "interruptible"
		}
		p.f("   ConsentLine says [%s, %s]: %s\n", said.Language, mark, said.Text)
	}
	if resp.HangsUp() {
		p.f("   ConsentLine hangs up.\n")
	}
}

func (p *printer) record(rec consent.Record, keys *pii.Keyring) {
	p.f("\nThe stored consent record (one per call and script):\n")
	row := func(k string, v any) { p.f("  %-27s %v\n", k, v) }
	row("id", rec.ID)
	row("call_sid", rec.CallSID)
	row("decision", rec.Decision)
	row("source", rec.Source)
	if rec.Confidence != nil {
		row("confidence", *rec.Confidence)
	}
	row("disclosure", fmt.Sprintf("%s v%s %s sha256:%s", rec.Script.ID, rec.Script.Version, rec.Script.Language, rec.Script.SHA256))
	row("barge_in", rec.BargeIn)
	row("disclosure_heard_ms", rec.DisclosureHeardMS)
	row("must_hear_complete", rec.MustHearComplete)
	row("timing", rec.Timing)
	if rec.Timing == consent.TimingEstimated {
		row("", "(estimated from the script's speaking time: no media stream measured this call)")
	}
	row("patient_ref", rec.PatientRef)
	row("decided_at", rec.DecidedAt.Format(time.RFC3339Nano))
	for _, f := range []struct {
		name   string
		sealed consent.Sealed
	}{{consent.FieldFrom, rec.From}, {consent.FieldTo, rec.To}, {consent.FieldTranscript, rec.Transcript}} {
		plain, err := keys.OpenFor(consent.RecordBinding(rec.CallSID, rec.Script.ID, f.name), f.sealed)
		if err != nil {
			plain = "(cannot decrypt: " + err.Error() + ")"
		}
		row(f.name+" (stored)", abbreviate(string(f.sealed)))
		row(f.name+" (DECRYPTED PII)", plain)
	}
}

func abbreviate(s string) string {
	if len(s) > 60 {
		return s[:40] + "…" + s[len(s)-12:] + " (JWE, " + fmt.Sprint(len(s)) + " chars)"
	}
	return s
}

func pathOf(u string) string {
	if parsed, err := url.Parse(u); err == nil {
		return parsed.Path
	}
	return strings.SplitN(u, "?", 2)[0]
}

func randomBytes(n int) []byte {
	b := make([]byte, n)
	_, _ = rand.Read(b) // crypto/rand.Read never fails (Go 1.24+).
	return b
}
