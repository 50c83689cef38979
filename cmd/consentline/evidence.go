package main

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"regexp"

	"github.com/consentline/consentline/consent"
)

const evidenceUsage = "usage: consentline evidence CALLSID --out answer.wav [--script ID]"

var callSIDArg = regexp.MustCompile(`^CA[0-9a-f]{32}$`)

// evidenceCommand: `evidence CALLSID --out FILE` writes the caller's answer
// as the call's media stream kept it, decrypted, as an 8 kHz μ-law WAV. The
// audio is PHI: it goes to the file named, never to the terminal.
func evidenceCommand(ctx context.Context, args []string, getenv func(string) string, stdout io.Writer) error {
	if len(args) == 0 || !callSIDArg.MatchString(args[0]) {
		return badSettings{errors.New(evidenceUsage + " (CALLSID is CA followed by 32 hex digits)")}
	}
	callSID := args[0]
	fs := flag.NewFlagSet("evidence", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	out := fs.String("out", "", "the WAV file to write")
	script := fs.String("script", "", "the disclosure script, when the call heard more than one")
	if err := fs.Parse(args[1:]); err != nil || fs.NArg() != 0 || *out == "" {
		return badSettings{errors.New(evidenceUsage)}
	}
	keys, err := keyringFromEnv(getenv)
	if err != nil {
		return err
	}
	db, err := openConfiguredDatabase(ctx, getenv)
	if err != nil {
		return err
	}
	defer db.store.Close()

	ms, err := db.store.StreamMeasurements(ctx, callSID)
	if err != nil {
		return err
	}
	m, err := pickEvidence(ctx, db.store, ms, callSID, *script)
	if err != nil {
		return err
	}
	plain, err := keys.OpenFor(consent.StreamBinding(m.CallSID, m.ScriptID), m.AnswerAudio)
	if err != nil {
		return fmt.Errorf("opening the answer audio of call %s: %w", callSID, err)
	}
	if err := os.WriteFile(*out, MuLawWAV([]byte(plain)), 0o600); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "wrote %s: the caller's answer to script %s, %.2f s of 8 kHz μ-law (answer onset %d ms into the stream, %d ms of it before the onset)\n",
		*out, m.ScriptID, float64(len(plain))/8000, m.AnswerOnsetMS, min(300, m.AnswerOnsetMS))
	fmt.Fprintln(stdout, "the file is PHI: keep it where the clinic keeps patient records")
	return nil
}

// pickEvidence chooses the measurement whose audio to write: the script
// asked for, else the one with a consent record, else the only one with
// audio. It says plainly why when there is none.
func pickEvidence(ctx context.Context, store consent.Store, ms []consent.StreamMeasurement, callSID, script string) (consent.StreamMeasurement, error) {
	var withAudio []consent.StreamMeasurement
	for _, m := range ms {
		if m.AnswerAudio != "" && (script == "" || m.ScriptID == script) {
			withAudio = append(withAudio, m)
		}
	}
	switch {
	case len(ms) == 0:
		return consent.StreamMeasurement{}, fmt.Errorf("call %s has no answer audio: no media stream reached ConsentLine for it (its timings are estimated)", callSID)
	case len(withAudio) == 0 && script != "":
		return consent.StreamMeasurement{}, fmt.Errorf("call %s has no answer audio for script %s", callSID, script)
	case len(withAudio) == 0:
		return consent.StreamMeasurement{}, fmt.Errorf("call %s has no answer audio: its media stream heard no answer from the caller", callSID)
	case len(withAudio) == 1:
		return withAudio[0], nil
	}
	for _, m := range withAudio {
		if _, err := store.Get(ctx, callSID, m.ScriptID); err == nil {
			return m, nil
		}
	}
	return consent.StreamMeasurement{}, fmt.Errorf("call %s has answer audio for several scripts: choose one with --script", callSID)
}

// MuLawWAV wraps 8 kHz mono μ-law samples in a WAV container
// (WAVE_FORMAT_MULAW) without converting them: the file holds exactly the
// bytes the caller's line sent, which is what evidence should be, and
// every common player (sox, ffmpeg, Audacity, browsers) plays it.
func MuLawWAV(samples []byte) []byte {
	var b bytes.Buffer
	le := func(v any) { _ = binary.Write(&b, binary.LittleEndian, v) }
	b.WriteString("RIFF")
	le(uint32(4 + 8 + 18 + 8 + 4 + 8 + len(samples) + len(samples)%2))
	b.WriteString("WAVE")
	b.WriteString("fmt ")
	le(uint32(18))
	le(uint16(7))    // WAVE_FORMAT_MULAW
	le(uint16(1))    // mono
	le(uint32(8000)) // samples per second
	le(uint32(8000)) // bytes per second
	le(uint16(1))    // block align
	le(uint16(8))    // bits per sample
	le(uint16(0))    // no extension
	// A non-PCM WAV carries its sample count in a fact chunk.
	b.WriteString("fact")
	le(uint32(4))
	le(uint32(len(samples)))
	b.WriteString("data")
	le(uint32(len(samples)))
	b.Write(samples)
	if len(samples)%2 == 1 {
		b.WriteByte(0) // chunks are padded to an even length
	}
	return b.Bytes()
}
