package answer

import (
	"strings"
	"testing"
)

// A table the classifier cannot use is refused when the package loads,
// naming the phrase, rather than quietly never matching.
func TestCompileRefusesBadTables(t *testing.T) {
	exp := map[string]string{"dont": "do not"}
	for _, c := range []struct {
		name    string
		lx      []*lexicon
		fillers []string
		mention string
	}{
		{"upper case", []*lexicon{{tag: "en", grants: []string{"Yes"}}}, nil, `"Yes"`},
		{"accent", []*lexicon{{tag: "es", grants: []string{"sí"}}}, nil, `"sí"`},
		{"contraction", []*lexicon{{tag: "en", refusals: []string{"dont"}}}, nil, `"do not"`},
		{"empty phrase", []*lexicon{{tag: "en", grants: []string{"^$"}}}, nil, `"^$"`},
		{"twice", []*lexicon{{tag: "en", grants: []string{"yes"}, refusals: []string{"yes"}}}, nil, "listed twice"},
		{"twice, shared", []*lexicon{{consents: []string{"okay"}}, {tag: "en", grants: []string{"okay"}}}, nil, "listed twice"},
		{"filler", []*lexicon{{tag: "en", grants: []string{"um yes"}}}, []string{"um"}, `"um"`},
		{"negator reaches nothing", []*lexicon{{tag: "en", negators: []negator{{"not", 0, false}}}}, nil, `"not"`},
		{"language twice", []*lexicon{{tag: "en"}, {tag: "EN"}}, nil, `"EN"`},
	} {
		if _, err := compile(c.lx, exp, c.fillers); err == nil || !strings.Contains(err.Error(), c.mention) {
			t.Errorf("%s: err = %v, want one mentioning %s", c.name, err, c.mention)
		}
	}
	// Anchored and bare, or the same phrase in two languages, is fine.
	if _, err := compile([]*lexicon{
		{tag: "en", refusals: []string{"^never$"}, negators: []negator{{"never", negWindow, false}}},
		{tag: "es", grants: []string{"never"}},
	}, exp, nil); err != nil {
		t.Error(err)
	}
}

// The order of lexicons decides only how a phrase two languages read
// differently is read when both apply. rules.go says "no" is the one such
// phrase; a new one needs a look at that order.
func TestPhrasesTwoLanguagesReadDifferently(t *testing.T) {
	type reading struct {
		k      kind
		window int
	}
	readings := map[string]map[string]reading{}
	for _, lx := range lexicons {
		if lx.tag == "" {
			continue
		}
		m := map[string]reading{}
		for _, g := range []struct {
			k     kind
			texts []string
		}{
			{kindAgree, lx.grants}, {kindDecline, lx.refusals}, {kindConsent, lx.consents},
			{kindSure, lx.sure}, {kindDoubt, lx.doubts}, {kindWant, lx.wants}, {kindUnclear, lx.notReady},
		} {
			for _, p := range g.texts {
				m[p] = reading{k: g.k}
			}
		}
		for _, n := range lx.negators {
			k := kindNeg
			if n.refuses {
				k = kindNegNo
			}
			m[n.phrase] = reading{k, n.reach}
		}
		readings[lx.tag] = m
	}
	var differ []string
	for p, en := range readings["en"] {
		if es, ok := readings["es"][p]; ok && es != en {
			differ = append(differ, p)
		}
	}
	if len(differ) != 1 || differ[0] != "no" {
		t.Errorf("phrases English and Spanish read differently: %q, want only \"no\"", differ)
	}
}
