// Package answer says what a caller's spoken answer to the consent question
// means: agree, decline, not an answer yet, or nothing at all. It knows only
// words; thresholds, scripts and records are the consent package's job, which
// maps a Meaning to its own Intent (this package imports nothing of
// ConsentLine's, so consent can depend on it and not the other way round).
//
// The words are data, in rules.go; tokenize.go turns a transcript into
// their token ids, and this file reads meaning from the tokens.
package answer

import (
	"strconv"
	"strings"
)

// Meaning is what a transcribed answer means.
type Meaning uint8

const (
	// None: nothing but whitespace, punctuation or fillers was said. The
	// zero value, like consent.NoIntent.
	None Meaning = iota
	Agree
	Decline
	Unclear
)

func (m Meaning) String() string {
	switch m {
	case None:
		return "none"
	case Agree:
		return "agree"
	case Decline:
		return "decline"
	case Unclear:
		return "unclear"
	}
	return "Meaning(" + strconv.Itoa(int(m)) + ")"
}

// Classify says what a transcribed answer means in the given language
// (BCP-47 like "en-US", "es-US"; the primary subtag picks the lexicon in
// rules.go; a language without one gets every lexicon's words).
//
// The rules, in order of precedence:
//
//   - Nothing but whitespace, punctuation or fillers ("um", "uh", "pues") is
//     None: the caller has not answered yet.
//   - Any sign the caller is not ready to answer (asks to repeat, asks for a
//     person, says "I don't know", "maybe", "not sure", "wait") makes the
//     answer Unclear, whatever else was said: "yes, can you repeat that?" is
//     not a consent we want on record.
//   - Both a grant and a refusal ("yes no", "I agree, no wait I don't") is
//     Unclear. We do not try to pick the "final" one: self-corrections are
//     hard to tell from hesitation in a transcript, a wrong record is a
//     compliance problem while an Unclear only costs a re-prompt, and the
//     caller is then asked again and can say the answer once.
//   - Otherwise a grant is Agree and a refusal is Decline; words that mean
//     neither are Unclear.
//
// Classify cannot tell a partial result from a final one. A partial may be a
// prefix of an answer that means something else: "I do" (Agree, a speech
// hint of the built-in script) is how "I do not agree" starts. Callers that
// decide on partials rely on the recognizer's stability for that.
//
// It allocates nothing unless the answer runs past 64 tokens.
func Classify(language, text string) Meaning {
	var buf [64]tokenID
	var tz tokenizer
	ids := tz.run(text, buf[:0])
	if tz.words == 0 {
		return None
	}
	return interpret(ids, languageOf(language))
}

// interpret runs over the canonical tokens once, left to right, matching the
// longest phrase at each position, and collects what was signalled.
func interpret(ids []tokenID, lang langMask) Meaning {
	var agree, decline, unclear bool
	// negEnd is the last token index a pending negation still reaches; -1
	// when none is pending.
	negEnd := -1
	for i := 0; i < len(ids); {
		if ids[i] == tokBreak {
			// A negation never crosses a clause: in "no, I agree" the
			// "no" does not negate "agree".
			negEnd = -1
			i++
			continue
		}
		r := match(ids, i, lang)
		if r == nil {
			i++
			continue
		}
		negated := i <= negEnd
		next := i + len(r.toks)
		switch r.kind {
		case kindAgree:
			agree = true
		case kindDecline:
			decline = true
		case kindUnclear:
			unclear = true
		case kindConsent:
			if negated {
				decline = true
				negEnd = -1
			} else {
				agree = true
			}
		case kindSure:
			if negated {
				unclear = true
				negEnd = -1
			} else {
				agree = true
			}
		case kindDoubt:
			if negated {
				unclear = true
				negEnd = -1
			}
		case kindWant:
			if negated {
				// "I don't want to give consent": the refusal covers
				// what follows, so the negation is renewed rather than
				// used up, and "consent" is refused too.
				decline = true
				negEnd = next - 1 + negWindow
			}
		case kindNegNo:
			decline = true
			negEnd = next - 1 + r.window
		case kindNeg:
			negEnd = next - 1 + r.window
		}
		i = next
	}
	switch {
	case unclear:
		return Unclear
	case agree && decline:
		return Unclear
	case agree:
		return Agree
	case decline:
		return Decline
	}
	// Words were said but none of them answer the question ("hello?",
	// "what?", "¿cómo?"): the caller needs the question again.
	return Unclear
}

// match returns the longest rule for lang that matches ids at i, or nil.
func match(ids []tokenID, i int, lang langMask) *rule {
	cands := rulesByFirst[ids[i]]
	for k := range cands {
		r := &cands[k]
		if r.lang&lang == 0 {
			continue
		}
		end := i + len(r.toks)
		if end > len(ids) {
			continue
		}
		if r.start && i > 0 && ids[i-1] != tokBreak {
			continue
		}
		if r.end && end < len(ids) && ids[end] != tokBreak {
			continue
		}
		ok := true
		for j := 1; j < len(r.toks); j++ {
			if ids[i+j] != r.toks[j] {
				ok = false
				break
			}
		}
		if ok {
			return r
		}
	}
	return nil
}

// langMask selects which rules apply: a bit per language (see languages),
// so that one rule can serve several.
type langMask uint8

// languageOf maps a BCP-47 tag to the rules for its primary subtag. Tags we
// have no words for get every language's: a wrong language setting should
// degrade to "probably still understood", not to "nothing is understood".
func languageOf(tag string) langMask {
	primary := tag
	if i := strings.IndexAny(tag, "-_"); i >= 0 {
		primary = tag[:i]
	}
	primary = strings.TrimSpace(primary)
	for _, l := range languages {
		if strings.EqualFold(primary, l.tag) {
			return l.mask
		}
	}
	return allLanguages
}

// kind is what a matched phrase contributes; each is one field of lexicon,
// where the words and what they mean are described.
type kind uint8

const (
	_           kind = iota
	kindAgree        // lexicon.grants
	kindDecline      // lexicon.refusals
	kindUnclear      // lexicon.notReady
	kindConsent      // lexicon.consents
	kindSure         // lexicon.sure
	kindDoubt        // lexicon.doubts
	kindWant         // lexicon.wants
	kindNeg          // lexicon.negators that do not refuse on their own
	kindNegNo        // lexicon.negators that do ("no")
)
