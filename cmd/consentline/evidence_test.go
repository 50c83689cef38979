package main

import (
	"bytes"
	"context"
	"encoding/binary"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/consentline/consentline/consent"
	"github.com/consentline/consentline/consent/sqlitestore"
	"github.com/consentline/consentline/internal/pii"
)

// evidence writes the stored answer audio, decrypted, as a μ-law WAV whose
// samples are exactly the bytes kept; a call without audio is said plainly.
func TestEvidence(t *testing.T) {
	env := validEnv()
	env["DATA_DIR"] = t.TempDir()
	ctx := context.Background()
	st, err := sqlitestore.Open(ctx, env["DATA_DIR"], sqlitestore.Options{Migrate: true})
	if err != nil {
		t.Fatal(err)
	}
	keys, err := pii.NewKeyring(mustKey(t, env["ENCRYPTION_KEY"]))
	if err != nil {
		t.Fatal(err)
	}
	const withAudio = "CA0123456789abcdef0123456789abcdef"
	const noAudio = "CAfedcba9876543210fedcba9876543210"
	audio := bytes.Repeat([]byte{0xff, 0x7f, 0x13}, 2667) // 8001 bytes: odd, so padded
	sealed, err := keys.SealFor(consent.StreamBinding(withAudio, "hipaa-consent"), string(audio))
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range []consent.StreamMeasurement{
		{CallSID: withAudio, ScriptID: "hipaa-consent", StartedAt: time.Now(), PromptOnsetMS: 300, PromptEndMS: -1, AnswerOnsetMS: 4200, AnswerEndMS: 5000, AnswerAudio: sealed},
		{CallSID: noAudio, ScriptID: "hipaa-consent", StartedAt: time.Now(), PromptOnsetMS: 300, PromptEndMS: 12000, AnswerOnsetMS: -1, AnswerEndMS: -1},
	} {
		if err := st.SaveStreamMeasurement(ctx, m); err != nil {
			t.Fatal(err)
		}
	}
	if err := st.Close(); err != nil {
		t.Fatal(err)
	}

	out := filepath.Join(t.TempDir(), "answer.wav")
	code, stdout, stderr := runCmd(t, env, "evidence", withAudio, "--out", out)
	if code != 0 {
		t.Fatalf("evidence: exit %d\n%s%s", code, stdout, stderr)
	}
	wav, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	if string(wav[:4]) != "RIFF" || string(wav[8:12]) != "WAVE" || binary.LittleEndian.Uint16(wav[20:22]) != 7 || binary.LittleEndian.Uint32(wav[24:28]) != 8000 {
		t.Fatalf("not an 8 kHz μ-law WAV: % x", wav[:44])
	}
	if riff := binary.LittleEndian.Uint32(wav[4:8]); int(riff) != len(wav)-8 {
		t.Errorf("RIFF size %d, file %d", riff, len(wav))
	}
	data := bytes.Index(wav, []byte("data"))
	if n := binary.LittleEndian.Uint32(wav[data+4:]); int(n) != len(audio) || !bytes.Equal(wav[data+8:data+8+int(n)], audio) {
		t.Fatal("the WAV's samples are not the stored answer")
	}
	if strings.Contains(stdout, string(audio[:3])) {
		t.Error("audio on the terminal")
	}

	for _, tc := range []struct {
		args []string
		code int
		say  string
	}{
		{[]string{"evidence", noAudio, "--out", out}, 1, "heard no answer"},
		{[]string{"evidence", "CAaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa", "--out", out}, 1, "no media stream reached ConsentLine"},
		{[]string{"evidence", "+14155550123", "--out", out}, exitUsage, "usage"},
		{[]string{"evidence", withAudio}, exitUsage, "usage"},
	} {
		code, stdout, stderr := runCmd(t, env, tc.args...)
		if code != tc.code || !strings.Contains(stderr, tc.say) {
			t.Errorf("%v: exit %d, %q%q; want %d saying %q", tc.args, code, stdout, stderr, tc.code, tc.say)
		}
		if strings.Contains(stderr, "4155550123") {
			t.Errorf("%v: echoed a phone number", tc.args)
		}
	}
}
