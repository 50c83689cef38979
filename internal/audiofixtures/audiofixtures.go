// Package audiofixtures carries the team's telephone audio fixtures (copied
// from ../shared/fixtures, which a user's clone does not have) for tests:
// single 8 kHz μ-law clips with their true speech onsets, and two-track
// calls (what the caller hears, what their line sends back) with the true
// onsets of the disclosure and the caller's answer. See audio/README.md and
// calls/README.md.
//
// Only tests import it: the embedded files (about 1.2 MB) never reach the
// consentline binary.
package audiofixtures

import (
	"embed"
	"fmt"
	"strconv"
	"strings"
)

//go:embed audio/*.ulaw audio/manifest.tsv calls/*.ulaw calls/calls.tsv
var files embed.FS

// Clip is one single-track clip of audio/manifest.tsv.
type Clip struct {
	File       string
	Text       string // what is said, or "[kind]" for non-speech
	Intent     string // agree, decline, unclear, or none for non-speech
	OnsetMS    int64  // true start of the sound in the file
	SpeechMS   int64  // length of the speech (0 for non-speech)
	Background string // added noise, colour@amplitude, or none
	Audio      []byte // raw μ-law, 160 bytes per 20 ms
}

// IsSpeech reports whether the clip holds speech (a VAD must find its onset)
// rather than a cough, a click or a DTMF tone (a VAD must find nothing).
func (c Clip) IsSpeech() bool { return c.Intent != "none" }

// Call is one two-track call of calls/calls.tsv.
type Call struct {
	Name              string
	Outbound, Inbound []byte // aligned sample for sample, equal length
	DisclosureOnsetMS int64
	DisclosureEndMS   int64
	// CallerOnsetMS is when the caller starts to speak on the inbound
	// track; -1 when they never do.
	CallerOnsetMS int64
	CallerText    string
	Intent        string // agree, decline, none
	BargeIn       bool
	Echo          string // delay and gain, or none
	Background    string // background talk and gain, or none
}

// Clips returns every clip of the manifest, in its order.
func Clips() ([]Clip, error) {
	rows, err := table("audio/manifest.tsv", 6)
	if err != nil {
		return nil, err
	}
	clips := make([]Clip, 0, len(rows))
	for _, r := range rows {
		c := Clip{File: r[0], Text: r[1], Intent: r[2], Background: r[5]}
		if c.OnsetMS, err = strconv.ParseInt(r[3], 10, 64); err != nil {
			return nil, fmt.Errorf("audiofixtures: %s onset: %w", c.File, err)
		}
		if c.SpeechMS, err = strconv.ParseInt(r[4], 10, 64); err != nil {
			return nil, fmt.Errorf("audiofixtures: %s speech_ms: %w", c.File, err)
		}
		if c.Audio, err = files.ReadFile("audio/" + c.File); err != nil {
			return nil, err
		}
		clips = append(clips, c)
	}
	return clips, nil
}

// Calls returns every call of calls.tsv, in its order.
func Calls() ([]Call, error) {
	rows, err := table("calls/calls.tsv", 11)
	if err != nil {
		return nil, err
	}
	calls := make([]Call, 0, len(rows))
	for _, r := range rows {
		c := Call{Name: r[0], CallerText: r[6], Intent: r[7], Echo: r[9], Background: r[10], CallerOnsetMS: -1}
		if c.DisclosureOnsetMS, err = strconv.ParseInt(r[3], 10, 64); err != nil {
			return nil, fmt.Errorf("audiofixtures: %s disclosure onset: %w", c.Name, err)
		}
		if c.DisclosureEndMS, err = strconv.ParseInt(r[4], 10, 64); err != nil {
			return nil, fmt.Errorf("audiofixtures: %s disclosure end: %w", c.Name, err)
		}
		if r[5] != "-" {
			if c.CallerOnsetMS, err = strconv.ParseInt(r[5], 10, 64); err != nil {
				return nil, fmt.Errorf("audiofixtures: %s caller onset: %w", c.Name, err)
			}
		}
		c.BargeIn = r[8] == "true"
		if c.Outbound, err = files.ReadFile("calls/" + r[1]); err != nil {
			return nil, err
		}
		if c.Inbound, err = files.ReadFile("calls/" + r[2]); err != nil {
			return nil, err
		}
		if len(c.Outbound) != len(c.Inbound) {
			return nil, fmt.Errorf("audiofixtures: %s tracks differ in length", c.Name)
		}
		calls = append(calls, c)
	}
	return calls, nil
}

// table reads a TSV with a header row and cols columns per row.
func table(name string, cols int) ([][]string, error) {
	b, err := files.ReadFile(name)
	if err != nil {
		return nil, err
	}
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	var rows [][]string
	for i, line := range lines[1:] {
		f := strings.Split(strings.TrimRight(line, "\r"), "\t")
		if len(f) != cols {
			return nil, fmt.Errorf("audiofixtures: %s line %d has %d columns, want %d", name, i+2, len(f), cols)
		}
		rows = append(rows, f)
	}
	return rows, nil
}

// CallNamed returns the call of calls.tsv named name.
func CallNamed(name string) (Call, error) {
	calls, err := Calls()
	if err != nil {
		return Call{}, err
	}
	for _, c := range calls {
		if c.Name == name {
			return c, nil
		}
	}
	return Call{}, fmt.Errorf("audiofixtures: no call named %q", name)
}
