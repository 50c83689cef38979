// Package answer says what a caller's spoken answer to the consent question
// means: agree, decline, not an answer yet, or nothing at all. It knows only
// words; thresholds, scripts and records are the consent package's job, which
// maps a Meaning to its own Intent (this package imports nothing of
// ConsentLine's, so consent can depend on it and not the other way round).
package answer

import (
	"fmt"
	"sort"
	"strconv"
	"strings"
	"unicode"
	"unicode/utf8"
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
// (BCP-47 like "en-US", "es-US"; match on the primary subtag; unknown
// languages fall back to English+Spanish rules).
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

// langMask selects which rules apply.
type langMask uint8

const (
	langEN langMask = 1 << iota
	langES
	langAll = langEN | langES
)

// languageOf maps a BCP-47 tag to the rules for its primary subtag. Tags we
// have no rules for get both sets: a wrong language setting should degrade
// to "probably still understood", not to "nothing is understood".
func languageOf(tag string) langMask {
	primary := tag
	if i := strings.IndexAny(tag, "-_"); i >= 0 {
		primary = tag[:i]
	}
	primary = strings.TrimSpace(primary)
	switch {
	case strings.EqualFold(primary, "en"):
		return langEN
	case strings.EqualFold(primary, "es"):
		return langES
	}
	return langAll
}

// kind is what a matched phrase contributes.
type kind uint8

const (
	_ kind = iota
	// kindAgree is a grant on its own; a negation before it changes nothing
	// ("no, of course" is a contradiction, not a refusal).
	kindAgree
	// kindDecline is a refusal on its own.
	kindDecline
	// kindUnclear means the caller is not answering yet: asks to repeat,
	// for a person, or is unsure.
	kindUnclear
	// kindConsent is a consent verb or adjective ("agree", "acepto",
	// "okay"): a grant, or a refusal when negated ("I don't agree").
	kindConsent
	// kindSure is "sure"/"seguro": a grant, but negated it is doubt, not
	// refusal ("I'm not sure", "no estoy seguro").
	kindSure
	// kindDoubt is a verb of knowing or hearing: nothing on its own, doubt
	// when negated ("I don't know", "I can't hear you", "no entiendo").
	// This is why negation only refuses when it negates consent.
	kindDoubt
	// kindWant is "want"/"quiero": nothing on its own ("I want to talk to a
	// person"), a refusal when negated ("I don't want to").
	kindWant
	// kindNeg is a negator: it negates what follows within its window.
	kindNeg
	// kindNegNo is "no": a refusal on its own and a negator as well, so "no
	// acepto" and a bare "no" both refuse.
	kindNegNo
)

// negWindow is how many tokens after a negator a consent word may come and
// still be negated: "I do NOT (really) (want to) AGREE", "NO le (doy) (mi)
// CONSENTIMIENTO". Contractions are expanded first, so "don't" counts as
// "do not" and the window starts after "not".
const negWindow = 4

// ruleGroup is one line of the rule table: phrases of one kind for some
// languages. Phrases are written the way the tokenizer leaves words: lower
// case, accents folded, apostrophes dropped and contractions expanded
// ("don't" is "do not", "I'm" is "i am"). A leading ^ or a trailing $
// anchors a phrase to the start or end of a clause, for words that only mean
// something said on their own ("never", "I do").
type ruleGroup struct {
	lang    langMask
	kind    kind
	window  int // negators only
	phrases []string
}

// ruleTable is the whole vocabulary of meaning. At each position the longest
// matching phrase wins, so idioms that contain a negator ("no problem",
// "not sure", "no sé") are read as idioms before "no"/"not" is read as a
// negator.
var ruleTable = []ruleGroup{
	// ---- both languages ----
	// "okay" is as common in Spanish answers as in English ones.
	{langAll, kindConsent, 0, []string{"okay"}},

	// ---- English ----
	{langEN, kindAgree, 0, []string{
		"yes", "yeah", "yea", "yah", "ya", "yep", "yup", "uhhuh", "mmhmm", "mhm", "mhmm",
		"absolutely", "definitely", "certainly", "of course", "go ahead", "please do",
		"sounds good", "all good", "that is good", "that works", "works for me", "perfect",
		"i think so", "i guess so", "i suppose so", "why not",
		// "I do" answers "do you agree?", but only as the whole clause:
		// "what do I do" is a question.
		"^i do$",
	}},
	// Idioms that contain a negator yet grant. Without them "no problem, I
	// agree" would read as a refusal followed by a grant.
	{langEN, kindAgree, 0, []string{
		"no problem", "no problems", "not a problem", "no worries", "no objection", "no objections",
		"not mind", "not object", "not have a problem", "not have any problem", "not have any problems",
	}},
	{langEN, kindDecline, 0, []string{
		"nope", "nah", "naw", "nuhuh", "no way",
		"absolutely not", "definitely not", "certainly not", "of course not",
		"not today", "not now", "not right now", "not interested", "i guess not", "i suppose not",
		"not think so", // "I don't think so"
		"decline", "declined", "refuse", "refused", "disagree", "deny", "object", "revoke",
		// Anchored so they do not swallow the "not" of "I don't really
		// agree" / "I'd rather not agree", which negation already refuses.
		"not really$", "not at all$", "rather not$",
		// Elliptical answers: "I don't.", "I won't.", "I can't.", "I'm not."
		"do not$", "will not$", "can not$", "would not$", "am not$",
		"^never$",
	}},
	{langEN, kindConsent, 0, []string{
		"agree", "agreed", "consent", "consented", "accept", "accepted", "approve",
		"authorize", "authorise", "allow", "permission", "fine", "all right", "comfortable",
		"happy to", "happy with",
	}},
	{langEN, kindSure, 0, []string{"sure", "certain"}},
	{langEN, kindDoubt, 0, []string{"know", "understand", "hear", "catch", "follow"}},
	{langEN, kindWant, 0, []string{"want", "wish", "like"}},
	{langEN, kindUnclear, 0, []string{
		// Asking for the question again. A lone "what?", "sorry?" or
		// "huh?" needs no rule: words that answer nothing are Unclear
		// anyway, and "sorry, I don't agree" is an answer.
		"repeat", "again", "come again", "pardon", "one more time",
		// Asking for a human.
		"agent", "representative", "operator", "person", "human", "someone", "somebody",
		"receptionist", "help", "question", "questions",
		// Undecided.
		"maybe", "perhaps", "possibly", "unsure", "confused", "no idea", "never mind",
		"wait", "hold on", "hang on", "one moment", "one second",
	}},
	{langEN, kindNeg, negWindow, []string{"not", "never"}},

	// ---- Spanish ----
	{langES, kindAgree, 0, []string{
		"si", "claro", "claro que si", "por supuesto", "desde luego", "perfecto", "con gusto",
		"adelante", "dale", "muy bien", "todo bien", "creo que si", "supongo que si",
		"por que no", // "¿por qué no?" is "why not"
		"^como no$",  // "¡cómo no!" is "of course"
	}},
	// Idioms that contain "no" yet grant.
	{langES, kindAgree, 0, []string{
		"no hay problema", "ningun problema", "sin problema", "sin problemas", "no tengo problema",
		"no tengo ningun problema", "no tengo inconveniente", "no hay inconveniente", "no me molesta",
	}},
	{langES, kindDecline, 0, []string{
		"nel", "claro que no", "por supuesto que no", "para nada", "de ninguna manera", "en absoluto",
		"creo que no", "supongo que no", "rechazo", "me niego", "niego", "desacuerdo",
		"^nunca$", "^jamas$",
	}},
	{langES, kindConsent, 0, []string{
		"acepto", "aceptar", "aceptado", "aceptamos", "consiento", "consentimiento", "autorizo",
		"apruebo", "permito", "permiso", "de acuerdo", "conforme", "vale", "esta bien",
	}},
	{langES, kindSure, 0, []string{"seguro", "segura"}},
	{langES, kindDoubt, 0, []string{"entiendo", "entendi", "comprendo", "escucho", "escuche", "oigo", "oi"}},
	{langES, kindWant, 0, []string{"quiero", "quisiera", "queremos", "deseo", "gustaria", "gusta"}},
	{langES, kindUnclear, 0, []string{
		"repita", "repite", "repitalo", "repetir", "repetirlo", "otra vez", "de nuevo",
		// A lone "¿qué?", "¿cómo?", "¿mande?" or "¿perdón?" is Unclear
		// without a rule, like the English ones.
		"agente", "representante", "operador", "operadora", "persona", "humano", "alguien",
		"recepcion", "recepcionista", "ayuda", "pregunta", "preguntas",
		// "no sé" negates knowing, not consenting.
		"no se", "no lo se", "no sabria", "quien sabe", "no tengo idea", "ni idea",
		"tal vez", "quizas", "quiza", "a lo mejor", "puede ser",
		"espera", "espere", "un momento", "un segundo",
	}},
	// Spanish negates the verb with "no" in front, often with pronouns in
	// between ("no le doy mi consentimiento"), so its window is the full one.
	{langES, kindNegNo, negWindow, []string{"no"}},
	{langES, kindNeg, negWindow, []string{"nunca", "jamas", "ni", "tampoco"}},

	// English "no" negates only the word right after it ("no consent"):
	// "no I agree" without a comma is more likely a transcription that lost
	// the comma than a refusal of "I agree". It is listed after the Spanish
	// "no" because, of equal phrases, the first in the table wins, and with
	// both languages the Spanish reading must hold ("no estoy de acuerdo").
	{langEN, kindNegNo, 1, []string{"no"}},
}

// expansions rewrites words before matching: contractions become the words
// they stand for, so one rule "not agree" covers "don't agree", "dont
// agree" and "do not agree"; spelling variants become one spelling.
var expansions = map[string]string{
	"dont": "do not", "doesnt": "does not", "didnt": "did not",
	"cant": "can not", "cannot": "can not", "couldnt": "could not",
	"wont": "will not", "wouldnt": "would not", "shouldnt": "should not",
	"isnt": "is not", "arent": "are not", "wasnt": "was not", "aint": "am not",
	"havent": "have not", "hasnt": "has not",
	"im": "i am", "ive": "i have", "id": "i would", "ill": "i will",
	"thats": "that is", "its": "it is", "whats": "what is", "youre": "you are",
	"alright": "all right", "ok": "okay", "okey": "okay", "okie": "okay",
	"wanna": "want to", "dunno": "do not know", "idk": "i do not know",
}

// fillers are dropped before matching, so "um yes I agree" and "I don't, uh,
// agree" read as if they were not there, and an answer of only fillers is
// None (the caller is still thinking). "bueno" is here because on a
// Mexican phone line "¿bueno?" is "hello?" and elsewhere it opens a sentence
// ("bueno, no sé"); it is not an answer either way.
var fillers = []string{
	"um", "umm", "ummm", "uh", "uhh", "uhm", "er", "erm", "ah", "ahh", "oh",
	"hm", "hmm", "hmmm", "mm", "mmm", "well",
	"em", "ehm", "este", "pues", "bueno",
}

// tokenID is a word of the rule vocabulary. Words outside it are tokUnknown:
// they still count as speech and as distance for negation, but never match.
type tokenID uint16

const (
	tokUnknown tokenID = iota
	tokBreak           // a clause break: punctuation between words
	firstWordID
)

type rule struct {
	toks       []tokenID
	kind       kind
	lang       langMask
	window     int
	start, end bool // anchored to the clause start / end
}

var (
	// vocab maps a normalized word to its canonical tokens; fillers map to
	// an empty, non-nil slice.
	vocab map[string][]tokenID
	// rulesByFirst[id] are the rules whose first token is id, longest
	// first, so match can stop at the first hit.
	rulesByFirst [][]rule
)

func init() {
	ids := map[string]tokenID{}
	idOf := func(w string) tokenID {
		if !isCanonicalWord(w) {
			panic(fmt.Sprintf("answer: rule word %q is not lower-case ASCII", w))
		}
		if _, ok := expansions[w]; ok {
			panic(fmt.Sprintf("answer: rule word %q must be written expanded", w))
		}
		id, ok := ids[w]
		if !ok {
			id = firstWordID + tokenID(len(ids))
			ids[w] = id
		}
		return id
	}

	var all []rule
	for _, g := range ruleTable {
		for _, p := range g.phrases {
			r := rule{kind: g.kind, lang: g.lang, window: g.window}
			if strings.HasPrefix(p, "^") {
				r.start, p = true, p[1:]
			}
			if strings.HasSuffix(p, "$") {
				r.end, p = true, p[:len(p)-1]
			}
			for _, w := range strings.Fields(p) {
				r.toks = append(r.toks, idOf(w))
			}
			if len(r.toks) == 0 {
				panic("answer: empty rule phrase")
			}
			all = append(all, r)
		}
	}

	vocab = make(map[string][]tokenID, len(ids)+len(expansions)+len(fillers))
	for raw, exp := range expansions {
		for _, w := range strings.Fields(exp) {
			vocab[raw] = append(vocab[raw], idOf(w))
		}
	}
	for w, id := range ids {
		vocab[w] = []tokenID{id}
	}
	for _, f := range fillers {
		if _, ok := vocab[f]; ok {
			panic(fmt.Sprintf("answer: filler %q is also a rule word", f))
		}
		vocab[f] = []tokenID{}
	}

	// Longest first; of equal length, anchored first (they are the more
	// specific), then table order.
	sort.SliceStable(all, func(a, b int) bool {
		return rank(all[a]) > rank(all[b])
	})
	rulesByFirst = make([][]rule, firstWordID+tokenID(len(ids)))
	for _, r := range all {
		for _, o := range rulesByFirst[r.toks[0]] {
			if o.lang&r.lang != 0 && o.start == r.start && o.end == r.end && equalIDs(o.toks, r.toks) {
				panic(fmt.Sprintf("answer: duplicate rule %v", r.toks))
			}
		}
		rulesByFirst[r.toks[0]] = append(rulesByFirst[r.toks[0]], r)
	}
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

// maxWordLen bounds a word; longer ones cannot be in the vocabulary and are
// read as one unknown word.
const maxWordLen = 32

// tokenizer normalizes and splits text in one pass over its bytes, without
// allocating: letters are lower-cased and accents folded into a fixed word
// buffer, and each finished word is looked up in vocab. The token slice is
// passed in and returned rather than kept in the struct so that the
// caller's fixed buffer can stay on the stack.
type tokenizer struct {
	words int // words heard, fillers excluded
	word  [maxWordLen]byte
	n     int
	long  bool // the current word overflowed word
	brk   bool // punctuation seen since the last token
}

// run appends text's tokens to ids.
func (t *tokenizer) run(text string, ids []tokenID) []tokenID {
	for i := 0; i < len(text); {
		c := text[i]
		if c < utf8.RuneSelf {
			i++
			switch {
			case 'a' <= c && c <= 'z', '0' <= c && c <= '9':
				t.add(c)
			case 'A' <= c && c <= 'Z':
				t.add(c + 'a' - 'A')
			case c == '\'' || c == '`':
				// Apostrophes join: "don't" → "dont", expanded later.
			case c == '-' && (t.n > 0 || t.long):
				// A hyphen inside a word joins: "uh-huh" → "uhhuh".
			case c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f':
				ids = t.endWord(ids)
			default:
				// Punctuation ends a clause: "no, I agree" is two.
				ids = t.endWord(ids)
				t.brk = true
			}
			continue
		}
		r, size := utf8.DecodeRuneInString(text[i:])
		i += size
		if f := foldAccent(r); f != 0 {
			t.add(f)
			continue
		}
		switch {
		case r == '’' || r == '‘' || r == 'ʼ' || r == '´' || r == '′':
			// Typographic apostrophes, as in "don’t".
		case unicode.Is(unicode.Mn, r):
			// Combining marks: a decomposed "sí" is "si" + U+0301.
		case unicode.IsLetter(r) || unicode.IsNumber(r):
			t.addRune(unicode.ToLower(r))
		case unicode.IsSpace(r):
			ids = t.endWord(ids)
		default:
			// ¿ ¡ « » … and invalid UTF-8 alike.
			ids = t.endWord(ids)
			t.brk = true
		}
	}
	return t.endWord(ids)
}

func (t *tokenizer) add(c byte) {
	if t.n < len(t.word) {
		t.word[t.n] = c
		t.n++
	} else {
		t.long = true
	}
}

func (t *tokenizer) addRune(r rune) {
	if t.n+utf8.RuneLen(r) <= len(t.word) {
		t.n += utf8.EncodeRune(t.word[t.n:], r)
	} else {
		t.long = true
	}
}

// endWord looks up the word collected so far and appends its tokens to ids.
func (t *tokenizer) endWord(ids []tokenID) []tokenID {
	if t.n == 0 && !t.long {
		return ids
	}
	exp, known := vocab[string(t.word[:t.n])]
	if t.long {
		exp, known = nil, false
	}
	t.n, t.long = 0, false
	if known && len(exp) == 0 {
		return ids // a filler
	}
	t.words++
	// Emit the clause break only between tokens, so anchors and negation
	// need no special case for leading or trailing punctuation.
	if t.brk {
		if len(ids) > 0 {
			ids = append(ids, tokBreak)
		}
		t.brk = false
	}
	if !known {
		return append(ids, tokUnknown)
	}
	return append(ids, exp...)
}

// foldAccent maps accented Latin letters, either case, to their bare ASCII
// lower-case letter ("sí" → "si", "está" → "esta", "ÑO" → "no"), and returns
// 0 for anything else. ñ folds to n: transcripts are inconsistent about it
// and no rule depends on the difference.
func foldAccent(r rune) byte {
	switch r {
	case 'á', 'à', 'â', 'ä', 'ã', 'å', 'Á', 'À', 'Â', 'Ä', 'Ã', 'Å':
		return 'a'
	case 'é', 'è', 'ê', 'ë', 'É', 'È', 'Ê', 'Ë':
		return 'e'
	case 'í', 'ì', 'î', 'ï', 'Í', 'Ì', 'Î', 'Ï':
		return 'i'
	case 'ó', 'ò', 'ô', 'ö', 'õ', 'Ó', 'Ò', 'Ô', 'Ö', 'Õ':
		return 'o'
	case 'ú', 'ù', 'û', 'ü', 'Ú', 'Ù', 'Û', 'Ü':
		return 'u'
	case 'ñ', 'Ñ':
		return 'n'
	case 'ç', 'Ç':
		return 'c'
	}
	return 0
}
