package answer

import (
	"fmt"
	"sort"
	"strings"
)

// This file turns the tables of rules.go into what the tokenizer and the
// interpreter run on: every rule word gets a token id, every phrase becomes
// a rule indexed by its first token, and every language tag a bit of
// langMask. It runs once, when the package loads, and panics on a table it
// cannot use, so a bad edit to rules.go fails every test at once instead of
// quietly never matching.

// rule is one compiled phrase.
type rule struct {
	toks       []tokenID
	kind       kind
	lang       langMask
	window     int  // negators only: their reach
	start, end bool // anchored to the clause start / end
}

// language is a tag with words of its own and the bit of its rules.
type language struct {
	tag  string
	mask langMask
}

// compiled is what compile makes of the tables.
type compiled struct {
	// vocab maps a normalized word to its canonical tokens; fillers map to
	// an empty, non-nil slice.
	vocab map[string][]tokenID
	// rulesByFirst[id] are the rules whose first token is id, longest
	// first, so match can stop at the first hit.
	rulesByFirst [][]rule
	// languages are the tags with words of their own, in lexicon order.
	languages []language
	// allLanguages selects every lexicon's rules.
	allLanguages langMask
}

// The compiled tables, read by the tokenizer and the interpreter. Package
// variables rather than a struct passed around, so the hot path reads them
// directly.
var (
	vocab        map[string][]tokenID
	rulesByFirst [][]rule
	languages    []language
	allLanguages langMask
)

func init() {
	c, err := compile(lexicons, expansions, fillers)
	if err != nil {
		panic(err)
	}
	vocab, rulesByFirst, languages, allLanguages = c.vocab, c.rulesByFirst, c.languages, c.allLanguages
}

func compile(lexicons []*lexicon, expansions map[string]string, fillers []string) (*compiled, error) {
	c := &compiled{}
	ids := map[string]tokenID{}
	idOf := func(w string) (tokenID, error) {
		if !isCanonicalWord(w) {
			return 0, fmt.Errorf("answer: rule word %q is not lower-case ASCII", w)
		}
		if _, ok := expansions[w]; ok {
			return 0, fmt.Errorf("answer: rule word %q must be written expanded, as %q", w, expansions[w])
		}
		id, ok := ids[w]
		if !ok {
			id = firstWordID + tokenID(len(ids))
			ids[w] = id
		}
		return id, nil
	}

	// Each language's rules get a bit; the words every language uses get
	// all of them.
	for _, lx := range lexicons {
		if lx.tag == "" {
			continue
		}
		for _, l := range c.languages {
			if strings.EqualFold(l.tag, lx.tag) {
				return nil, fmt.Errorf("answer: two lexicons for %q", lx.tag)
			}
		}
		if len(c.languages) == 8 { // langMask is a uint8
			return nil, fmt.Errorf("answer: more languages than langMask has bits")
		}
		m := langMask(1) << len(c.languages)
		c.languages = append(c.languages, language{lx.tag, m})
		c.allLanguages |= m
	}

	type phrase struct {
		rule
		text string
	}
	var all []phrase
	add := func(lang langMask, k kind, window int, texts ...string) error {
		for _, p := range texts {
			r := phrase{rule: rule{kind: k, lang: lang, window: window}, text: p}
			if strings.HasPrefix(p, "^") {
				r.start, p = true, p[1:]
			}
			if strings.HasSuffix(p, "$") {
				r.end, p = true, p[:len(p)-1]
			}
			for _, w := range strings.Fields(p) {
				id, err := idOf(w)
				if err != nil {
					return err
				}
				r.toks = append(r.toks, id)
			}
			if len(r.toks) == 0 {
				return fmt.Errorf("answer: empty phrase %q", r.text)
			}
			all = append(all, r)
		}
		return nil
	}
	for _, lx := range lexicons {
		lang := c.allLanguages
		for _, l := range c.languages {
			if l.tag == lx.tag {
				lang = l.mask
			}
		}
		for _, g := range []struct {
			k     kind
			texts []string
		}{
			{kindAgree, lx.grants},
			{kindDecline, lx.refusals},
			{kindConsent, lx.consents},
			{kindSure, lx.sure},
			{kindDoubt, lx.doubts},
			{kindWant, lx.wants},
			{kindUnclear, lx.notReady},
		} {
			if err := add(lang, g.k, 0, g.texts...); err != nil {
				return nil, err
			}
		}
		for _, n := range lx.negators {
			k := kindNeg
			if n.refuses {
				k = kindNegNo
			}
			if n.reach < 1 {
				return nil, fmt.Errorf("answer: negator %q reaches no word", n.phrase)
			}
			if err := add(lang, k, n.reach, n.phrase); err != nil {
				return nil, err
			}
		}
	}

	c.vocab = make(map[string][]tokenID, len(ids)+len(expansions)+len(fillers))
	for raw, exp := range expansions {
		if !isCanonicalWord(raw) {
			return nil, fmt.Errorf("answer: expanded word %q is not lower-case ASCII", raw)
		}
		for _, w := range strings.Fields(exp) {
			id, err := idOf(w)
			if err != nil {
				return nil, err
			}
			c.vocab[raw] = append(c.vocab[raw], id)
		}
	}
	for w, id := range ids {
		c.vocab[w] = []tokenID{id}
	}
	for _, f := range fillers {
		if _, ok := c.vocab[f]; ok {
			return nil, fmt.Errorf("answer: filler %q is also a rule word", f)
		}
		c.vocab[f] = []tokenID{}
	}

	// Longest first; of equal length, anchored first (they are the more
	// specific), then lexicon order (see lexicons).
	sort.SliceStable(all, func(a, b int) bool {
		return rank(all[a].rule) > rank(all[b].rule)
	})
	c.rulesByFirst = make([][]rule, firstWordID+tokenID(len(ids)))
	texts := make([][]string, len(c.rulesByFirst))
	for _, r := range all {
		first := r.toks[0]
		for k, o := range c.rulesByFirst[first] {
			if o.lang&r.lang != 0 && o.start == r.start && o.end == r.end && equalIDs(o.toks, r.toks) {
				return nil, fmt.Errorf("answer: %q and %q are one phrase listed twice for a language", texts[first][k], r.text)
			}
		}
		c.rulesByFirst[first] = append(c.rulesByFirst[first], r.rule)
		texts[first] = append(texts[first], r.text)
	}
	return c, nil
}

func rank(r rule) int {
	n := 4 * len(r.toks)
	if r.start {
		n++
	}
	if r.end {
		n++
	}
	return n
}

func equalIDs(a, b []tokenID) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func isCanonicalWord(w string) bool {
	if w == "" {
		return false
	}
	for i := 0; i < len(w); i++ {
		if c := w[i]; (c < 'a' || c > 'z') && (c < '0' || c > '9') {
			return false
		}
	}
	return true
}
