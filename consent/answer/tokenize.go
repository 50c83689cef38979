package answer

import (
	"unicode"
	"unicode/utf8"
)

// tokenID is a word of the rule vocabulary. Words outside it are tokUnknown:
// they still count as speech and as distance for negation, but never match.
type tokenID uint16

const (
	tokUnknown tokenID = iota
	tokBreak           // a clause break: punctuation between words
	firstWordID
)

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
