package answer

import (
	"math/rand/v2"
	"strings"
	"testing"
)

type classifyCase struct {
	lang, text string
	want       Meaning
}

var classifyCases = []classifyCase{
	// English refusals.
	{"en-US", "I don't agree", Decline},
	{"en-US", "I do not agree", Decline},
	{"en-US", "I can't consent", Decline},
	{"en-US", "I cannot consent", Decline},
	{"en-US", "no, I do not agree", Decline},
	{"en-US", "no thanks", Decline},
	{"en-US", "No thank you.", Decline},
	{"en-US", "no", Decline},
	{"en-US", "nope", Decline},
	{"en-US", "nah", Decline},
	{"en-US", "I decline", Decline},
	{"en-US", "I refuse", Decline},
	{"en-US", "I don't consent", Decline},
	{"en-US", "absolutely not", Decline},
	{"en-US", "Definitely not!", Decline},
	{"en-US", "of course not", Decline},
	{"en-US", "I don't want to", Decline},
	{"en-US", "I don't want to give my consent", Decline},
	{"en-US", "I won't agree", Decline},
	{"en-US", "I will not accept that", Decline},
	{"en-US", "I don't.", Decline},
	{"en-US", "I won't", Decline},
	{"en-US", "I'm not", Decline},
	{"en-US", "uh no", Decline},
	{"en-US", "NO NO NO", Decline},
	{"en-US", "no way", Decline},
	{"en-US", "I don't think so", Decline},
	{"en-US", "I don't think I agree", Decline},
	{"en-US", "I don't really agree", Decline},
	{"en-US", "not really", Decline},
	{"en-US", "I'd rather not", Decline},
	{"en-US", "that's not okay with me", Decline},
	{"en-US", "I'm not comfortable with that", Decline},
	{"en-US", "I disagree", Decline},
	{"en-US", "never", Decline},
	{"en-US", "not right now", Decline},
	{"en-US", "I do not give my consent", Decline},
	{"en-US", "I don’t agree", Decline}, // typographic apostrophe
	{"en-US", "I dont agree", Decline},  // apostrophe lost in transcription
	{"en-US", "I don't um agree", Decline},

	// English grants.
	{"en-US", "yes I agree", Agree},
	{"en-US", "Yes I agree.", Agree},
	{"en-US", "YES, I AGREE!", Agree},
	{"en-US", "um yes I agree", Agree},
	{"en-US", "I consent", Agree},
	{"en-US", "sure, I accept", Agree},
	{"en-US", "yeah", Agree},
	{"en-US", "yes", Agree},
	{"en-US", "yep", Agree},
	{"en-US", "okay", Agree},
	{"en-US", "OK", Agree},
	{"en-US", "I agree to that", Agree},
	{"en-US", "yes, I consent", Agree},
	{"en-US", "that's fine", Agree},
	{"en-US", "of course", Agree},
	{"en-US", "No problem, I agree", Agree},
	{"en-US", "no problem", Agree},
	{"en-US", "I don't mind", Agree},
	{"en-US", "I have no objection", Agree},
	{"en-US", "I don't have a problem with that", Agree},
	{"en-US", "I do", Agree},
	{"en-US", "Yes, I do.", Agree},
	{"en-US", "uh-huh", Agree},
	{"en-US", "Mm-hmm.", Agree},
	{"en-US", "sure, why not", Agree},
	{"en-US", "absolutely", Agree},
	{"en-US", "I'm okay with that", Agree},
	{"en-US", "alright", Agree},
	{"en-US", "go ahead", Agree},
	{"en-US", "yes please, thank you", Agree},
	{"en-US", "I think so", Agree},

	// English: not an answer yet.
	{"en-US", "what?", Unclear},
	{"en-US", "repeat that", Unclear},
	{"en-US", "can you repeat that please", Unclear},
	{"en-US", "agent", Unclear},
	{"en-US", "I want to talk to a person", Unclear},
	{"en-US", "representative", Unclear},
	{"en-US", "I don't know", Unclear},
	{"en-US", "I really don't know", Unclear},
	{"en-US", "I don't really know", Unclear},
	{"en-US", "idk", Unclear},
	{"en-US", "maybe", Unclear},
	{"en-US", "I'm not sure", Unclear},
	{"en-US", "not sure", Unclear},
	{"en-US", "I'm not so sure", Unclear},
	{"en-US", "I can't hear you", Unclear},
	{"en-US", "I didn't catch that", Unclear},
	{"en-US", "I don't understand", Unclear},
	{"en-US", "hello?", Unclear},
	{"en-US", "what is this for", Unclear},
	{"en-US", "banana", Unclear},
	{"en-US", "yes, can you repeat that?", Unclear},
	{"en-US", "I have no idea", Unclear},
	{"en-US", "hold on", Unclear},
	{"en-US", "I don't know if I agree", Unclear},
	{"en-US", "I'm not sure I agree", Unclear},
	{"en-US", "what do I do", Unclear},

	// Contradictions.
	{"en-US", "yes no", Unclear},
	{"en-US", "I agree, no wait I don't", Unclear},
	{"en-US", "yes, I do not agree", Unclear},
	{"en-US", "no, I agree", Unclear},
	{"en-US", "nope, okay", Unclear},
	{"es-US", "sí, no", Unclear},
	{"es-US", "no, sí acepto", Unclear},

	// Nothing said.
	{"en-US", "", None},
	{"en-US", "   \t\n ", None},
	{"en-US", "...?!", None},
	{"es-US", "¿¡!?", None},
	{"en-US", "um", None},
	{"en-US", "uh... hmm", None},
	{"es-US", "eh, este, pues", Unclear}, // "eh" can be "¿eh?", a question
	{"es-US", "¿Bueno?", None},

	// Spanish refusals.
	{"es-US", "no estoy de acuerdo", Decline},
	{"es-US", "No estoy de acuerdo.", Decline},
	{"es-US", "no acepto", Decline},
	{"es-US", "no doy mi consentimiento", Decline},
	{"es-US", "no le doy mi consentimiento", Decline},
	{"es-US", "no gracias", Decline},
	{"es-US", "No, gracias.", Decline},
	{"es-US", "no, no quiero", Decline},
	{"es-US", "no quiero dar mi consentimiento", Decline},
	{"es-US", "no", Decline},
	{"es-US", "claro que no", Decline},
	{"es-US", "por supuesto que no", Decline},
	{"es-US", "para nada", Decline},
	{"es-US", "nunca", Decline},
	{"es-US", "me niego", Decline},
	{"es-US", "no está bien", Decline},
	{"es-US", "creo que no", Decline},
	{"es-US", "porque no quiero", Decline},
	{"es-US", "eh no", Decline},

	// Spanish grants.
	{"es-US", "sí", Agree},
	{"es-US", "si", Agree},
	{"es-US", "SÍ", Agree},
	{"es-US", "si\u0301", Agree}, // decomposed accent
	{"es-US", "sí, acepto", Agree},
	{"es-US", "estoy de acuerdo", Agree},
	{"es-US", "Sí, estoy de acuerdo.", Agree},
	{"es-US", "doy mi consentimiento", Agree},
	{"es-US", "claro", Agree},
	{"es-US", "¡Claro que sí!", Agree},
	{"es-US", "de acuerdo", Agree},
	{"es-US", "vale", Agree},
	{"es-US", "está bien", Agree},
	{"es-US", "por supuesto", Agree},
	{"es-US", "¡Cómo no!", Agree},
	{"es-US", "¿Por qué no?", Agree},
	{"es-US", "no hay problema", Agree},
	{"es-US", "bueno, sí", Agree},
	{"es-US", "okay", Agree},
	{"es-US", "sí, seguro", Agree},

	// Spanish: not an answer yet.
	{"es-US", "¿qué?", Unclear},
	{"es-US", "¿Cómo?", Unclear},
	{"es-US", "repita por favor", Unclear},
	{"es-US", "¿Puede repetir?", Unclear},
	{"es-US", "no sé", Unclear},
	{"es-US", "No lo sé.", Unclear},
	{"es-US", "yo no sé", Unclear},
	{"es-US", "quiero hablar con una persona", Unclear},
	{"es-US", "un agente", Unclear},
	{"es-US", "tal vez", Unclear},
	{"es-US", "no estoy seguro", Unclear},
	{"es-US", "no estoy muy segura", Unclear},
	{"es-US", "no entiendo", Unclear},
	{"es-US", "no le escuché", Unclear},
	{"es-US", "sí, no sé", Unclear},
	{"es-US", "¿Mande?", Unclear},
	{"es-US", "Perdón, sí acepto.", Agree},
	{"en-US", "Sorry, I don't agree.", Decline},
	{"en-US", "Sorry?", Unclear},
	{"en-US", "huh", Unclear},

	// Languages: the primary subtag picks the rules; others get both.
	{"es", "sí", Agree},
	{"ES-mx", "acepto", Agree},
	{"es_US", "no acepto", Decline},
	{"en", "I agree", Agree},
	{"en-GB", "sí", Unclear}, // English rules only: not a word they know
	{"es-US", "I agree", Unclear},
	{"es-US", "no", Decline}, // "no" and "okay" are in both
	{"", "sí, acepto", Agree},
	{"", "I agree", Agree},
	{"fr-FR", "no estoy de acuerdo", Decline},
	{"fr-FR", "no sé", Unclear},
	{"fr-FR", "I don't know", Unclear},
	{"de", "No problem, I agree", Agree},
}

func TestClassify(t *testing.T) {
	for _, c := range classifyCases {
		if got := Classify(c.lang, c.text); got != c.want {
			t.Errorf("Classify(%q, %q) = %q, want %q", c.lang, c.text, got, c.want)
		}
		// Case, a trailing full stop and a leading filler never change
		// the meaning.
		for _, v := range []string{strings.ToUpper(c.text), c.text + ".", "um " + c.text} {
			if got := Classify(c.lang, v); got != c.want {
				t.Errorf("Classify(%q, %q) = %q, want %q (variant of %q)", c.lang, v, got, c.want, c.text)
			}
		}
	}
}

func TestClassifyCaseCount(t *testing.T) {
	if len(classifyCases) < 60 {
		t.Fatalf("only %d cases", len(classifyCases))
	}
}

// Long answers run past the fixed token buffer and must still be read whole.
func TestClassifyLongAnswer(t *testing.T) {
	long := strings.Repeat("well I was thinking about it and ", 20)
	for _, c := range []classifyCase{
		{"en-US", long + "yes I agree", Agree},
		{"en-US", long + "I don't agree", Decline},
		{"en-US", strings.Repeat("um ", 200) + "yes", Agree},
		{"en-US", strings.Repeat("um ", 200), None},
		{"en-US", strings.Repeat("x", 500) + " yes", Agree},
		{"en-US", "yes " + strings.Repeat("é", 100), Agree}, // an over-long word is one unknown word
	} {
		if got := Classify(c.lang, c.text); got != c.want {
			t.Errorf("Classify(%q, %.40q…) = %q, want %q", c.lang, c.text, got, c.want)
		}
	}
}

// Classify runs on every speech webhook and partial result: the common case
// must not allocate.
func TestClassifyDoesNotAllocate(t *testing.T) {
	for _, text := range []string{"Yes, I agree.", "No, no estoy de acuerdo.", "¿Puede repetir, por favor?"} {
		if n := testing.AllocsPerRun(100, func() { Classify("es-US", text) }); n != 0 {
			t.Errorf("Classify(%q) allocates %v times", text, n)
		}
	}
}

func validMeaning(i Meaning) bool {
	switch i {
	case Agree, Decline, Unclear, None:
		return true
	}
	return false
}

// Random bytes, half of them drawn from the characters the tokenizer treats
// specially, never panic and always yield one of the four intents.
func TestClassifyNeverPanics(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	pieces := []string{"no", "not", "yes", "sí", "don't", "'", "’", "-", ",", " ", "¿", "\u0301", "\xff", "\xc3", "é", "İ", "ß", "\x00", "^", "$", "i do"}
	for n := 0; n < 500; n++ {
		var b strings.Builder
		for k := rng.IntN(40); k > 0; k-- {
			if rng.IntN(2) == 0 {
				b.WriteByte(byte(rng.IntN(256)))
			} else {
				b.WriteString(pieces[rng.IntN(len(pieces))])
			}
		}
		s := b.String()
		for _, lang := range []string{"en-US", "es-US", "", "\xff-"} {
			if got := Classify(lang, s); !validMeaning(got) {
				t.Fatalf("Classify(%q, %q) = %q", lang, s, got)
			}
		}
	}
}

func FuzzClassify(f *testing.F) {
	for _, c := range classifyCases {
		f.Add(c.lang, c.text)
	}
	f.Add("en-US", "\xff\xfe don\xe2\x80\x99t")
	f.Add("es-US", strings.Repeat("no ", 100))
	f.Fuzz(func(t *testing.T, lang, text string) {
		got := Classify(lang, text)
		if !validMeaning(got) {
			t.Fatalf("Classify(%q, %q) = %q", lang, text, got)
		}
		// Trailing punctuation and a leading filler are not words.
		if again := Classify(lang, text+"."); again != got {
			t.Fatalf("Classify(%q, %q) = %q but with a full stop %q", lang, text, got, again)
		}
		if again := Classify(lang, "um "+text); again != got {
			t.Fatalf("Classify(%q, %q) = %q but after \"um \" %q", lang, text, got, again)
		}
	})
}

var benchSink Meaning

func BenchmarkClassify(b *testing.B) {
	inputs := []classifyCase{
		{"en-US", "Yes, I agree.", Agree},
		{"en-US", "um, no, I do not agree", Decline},
		{"en-US", "I don't know, can you repeat that please?", Unclear},
		{"en-US", "No problem, I agree", Agree},
		{"es-US", "Sí, estoy de acuerdo.", Agree},
		{"es-US", "No, no quiero dar mi consentimiento", Decline},
		{"es-US", "¿Qué? No sé.", Unclear},
		{"en-US", "I", Unclear}, // a typical early partial
	}
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		c := inputs[i%len(inputs)]
		benchSink = Classify(c.lang, c.text)
		i++
	}
}
