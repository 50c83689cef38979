package answer

// This file is the classifier's vocabulary, and nothing else: which words
// and phrases mean what, per language. The tokenizer (tokenize.go) and the
// interpreter (classify.go) know no words; compile.go turns these tables
// into the token ids they work on, and refuses at start a table it cannot
// use (a word that is not lower-case ASCII or not written expanded, a phrase
// listed twice for one language, a filler that is also a rule word).
//
// Phrases are written the way the tokenizer leaves words: lower case,
// accents folded, apostrophes dropped and contractions expanded ("don't" is
// "do not", "I'm" is "i am"). A leading ^ or a trailing $ anchors a phrase to
// the start or end of a clause, for words that only mean something said on
// their own ("never", "I do"). At each position the longest matching phrase
// wins, so idioms that contain a negator ("no problem", "not sure", "no sé")
// are read as idioms before "no"/"not" is read as a negator.

// lexicon is one language's words, by what each contributes to the answer.
type lexicon struct {
	// tag is the BCP-47 primary subtag these words are for ("en"); empty
	// for words every language uses.
	tag string
	// grants mean yes on their own; a negation before them changes nothing
	// ("no, of course" is a contradiction, not a refusal).
	grants []string
	// refusals mean no on their own.
	refusals []string
	// consents are consent verbs and adjectives ("agree", "acepto"): a
	// grant, or a refusal when negated ("I don't agree").
	consents []string
	// sure is "sure": a grant, but negated it is doubt, not refusal ("I'm
	// not sure").
	sure []string
	// doubts are verbs of knowing or hearing: nothing on their own, doubt
	// when negated ("I don't know", "I can't hear you"). They are why a
	// negation only refuses when it negates consent.
	doubts []string
	// wants are "want" and the like: nothing on their own ("I want to talk
	// to a person"), a refusal when negated ("I don't want to"), and the
	// negation then reaches on past them, so "I don't want to give
	// consent" refuses the consent too.
	wants []string
	// notReady say the caller is not answering yet: asks for the question
	// again, for a person, or is undecided. One of them makes the whole
	// answer Unclear, whatever else was said.
	notReady []string
	// negators negate the consent, sure, doubt or want word after them.
	negators []negator
}

// negator is a word that negates what follows it.
type negator struct {
	phrase string
	// reach is how many tokens after the negator a word may come and still
	// be negated.
	reach int
	// refuses: the negator is a refusal on its own as well ("no").
	refuses bool
}

// negWindow is the usual reach of a negator: "I do NOT (really) (want to)
// AGREE", "NO le (doy) (mi) CONSENTIMIENTO". Contractions are expanded
// first, so "don't" counts as "do not" and the window starts after "not". A
// negated want renews the negation for this many tokens.
const negWindow = 4

// lexicons are every language's words. Their order matters in one case
// only: a language tag without words of its own gets every language's, and
// a phrase two languages read differently is then read the way the earlier
// lexicon reads it. "no" is the one such phrase, and Spanish comes first so
// that "no estoy de acuerdo" still refuses: Spanish "no" reaches a verb
// several words on, English "no" only the next word.
var lexicons = []*lexicon{&everyLanguage, &spanish, &english}

// everyLanguage is the words every language's answers use.
var everyLanguage = lexicon{
	// "okay" is as common in Spanish answers as in English ones.
	consents: []string{"okay"},
}

var english = lexicon{
	tag: "en",
	grants: []string{
		"yes", "yeah", "yea", "yah", "ya", "yep", "yup", "uhhuh", "mmhmm", "mhm", "mhmm",
		"absolutely", "definitely", "certainly", "of course", "go ahead", "please do",
		"sounds good", "all good", "that is good", "that works", "works for me", "perfect",
		"i think so", "i guess so", "i suppose so", "why not",
		// "I do" answers "do you agree?", but only as the whole clause:
		// "what do I do" is a question.
		"^i do$",
		// Idioms that contain a negator yet grant. Without them "no
		// problem, I agree" would read as a refusal followed by a grant.
		"no problem", "no problems", "not a problem", "no worries", "no objection", "no objections",
		"not mind", "not object", "not have a problem", "not have any problem", "not have any problems",
	},
	refusals: []string{
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
	},
	consents: []string{
		"agree", "agreed", "consent", "consented", "accept", "accepted", "approve",
		"authorize", "authorise", "allow", "permission", "fine", "all right", "comfortable",
		"happy to", "happy with",
	},
	sure:   []string{"sure", "certain"},
	doubts: []string{"know", "understand", "hear", "catch", "follow"},
	wants:  []string{"want", "wish", "like"},
	notReady: []string{
		// Asking for the question again. A lone "what?", "sorry?" or
		// "huh?" needs no entry: words that answer nothing are Unclear
		// anyway, and "sorry, I don't agree" is an answer.
		"repeat", "again", "come again", "pardon", "one more time",
		// Asking for a human.
		"agent", "representative", "operator", "person", "human", "someone", "somebody",
		"receptionist", "help", "question", "questions",
		// Undecided.
		"maybe", "perhaps", "possibly", "unsure", "confused", "no idea", "never mind",
		"wait", "hold on", "hang on", "one moment", "one second",
	},
	negators: []negator{
		{"not", negWindow, false},
		{"never", negWindow, false},
		// English "no" negates only the word right after it ("no
		// consent"): "no I agree" without a comma is more likely a
		// transcription that lost the comma than a refusal of "I agree".
		{"no", 1, true},
	},
}

var spanish = lexicon{
	tag: "es",
	grants: []string{
		"si", "claro", "claro que si", "por supuesto", "desde luego", "perfecto", "con gusto",
		"adelante", "dale", "muy bien", "todo bien", "creo que si", "supongo que si",
		"por que no", // "¿por qué no?" is "why not"
		"^como no$",  // "¡cómo no!" is "of course"
		// Idioms that contain "no" yet grant.
		"no hay problema", "ningun problema", "sin problema", "sin problemas", "no tengo problema",
		"no tengo ningun problema", "no tengo inconveniente", "no hay inconveniente", "no me molesta",
	},
	refusals: []string{
		"nel", "claro que no", "por supuesto que no", "para nada", "de ninguna manera", "en absoluto",
		"creo que no", "supongo que no", "rechazo", "me niego", "niego", "desacuerdo",
		"^nunca$", "^jamas$",
	},
	consents: []string{
		"acepto", "aceptar", "aceptado", "aceptamos", "consiento", "consentimiento", "autorizo",
		"apruebo", "permito", "permiso", "de acuerdo", "conforme", "vale", "esta bien",
	},
	sure:   []string{"seguro", "segura"},
	doubts: []string{"entiendo", "entendi", "comprendo", "escucho", "escuche", "oigo", "oi"},
	wants:  []string{"quiero", "quisiera", "queremos", "deseo", "gustaria", "gusta"},
	notReady: []string{
		"repita", "repite", "repitalo", "repetir", "repetirlo", "otra vez", "de nuevo",
		// A lone "¿qué?", "¿cómo?", "¿mande?" or "¿perdón?" is Unclear
		// without an entry, like the English ones.
		"agente", "representante", "operador", "operadora", "persona", "humano", "alguien",
		"recepcion", "recepcionista", "ayuda", "pregunta", "preguntas",
		// "no sé" negates knowing, not consenting.
		"no se", "no lo se", "no sabria", "quien sabe", "no tengo idea", "ni idea",
		"tal vez", "quizas", "quiza", "a lo mejor", "puede ser",
		"espera", "espere", "un momento", "un segundo",
	},
	negators: []negator{
		// Spanish negates the verb with "no" in front, often with pronouns
		// in between ("no le doy mi consentimiento"), so its reach is the
		// full window.
		{"no", negWindow, true},
		{"nunca", negWindow, false},
		{"jamas", negWindow, false},
		{"ni", negWindow, false},
		{"tampoco", negWindow, false},
	},
}

// expansions rewrite words before matching, whatever the language:
// contractions become the words they stand for, so one phrase "not agree"
// covers "don't agree", "dont agree" and "do not agree"; spelling variants
// become one spelling.
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

// fillers are dropped before matching, whatever the language, so "um yes I
// agree" and "I don't, uh, agree" read as if they were not there, and an
// answer of only fillers is None (the caller is still thinking). "bueno" is
// here because on a Mexican phone line "¿bueno?" is "hello?" and elsewhere
// it opens a sentence ("bueno, no sé"); it is not an answer either way.
var fillers = []string{
	"um", "umm", "ummm", "uh", "uhh", "uhm", "er", "erm", "ah", "ahh", "oh",
	"hm", "hmm", "hmmm", "mm", "mmm", "well",
	"em", "ehm", "este", "pues", "bueno",
}
