package twiml

import "strings"

// Speaking-time estimate. Twilio does not report how long a <Say> played, so
// until the media stream measures the barge-in point, ConsentLine estimates
// it from the text: Polly's standard voices read prompts at roughly 150 words
// a minute (400 ms a word), and pause at each sentence end and between
// consecutive <Say> verbs. The estimate errs a little long rather than short:
// a short one would record a caller who interrupted as having heard the whole
// disclosure, which overstates what they were told; a long one at worst flags
// as a barge-in an answer given just after the question ended.
const (
	msPerWord     = 60_000 / 150 // 150 words per minute
	msPerSentence = 350          // the pause at a sentence end or between <Say>s
)

// speakingMS estimates how long text takes to speak: 400 ms per word plus
// 350 ms per sentence (a text that does not end with . ! or ? still counts
// as one sentence, since a <Say> ends with a pause too).
func speakingMS(text string) int64 {
	words := int64(len(strings.Fields(text)))
	if words == 0 {
		return 0
	}
	return words*msPerWord + int64(sentences(text))*msPerSentence
}

// sentences counts sentence ends: a run of . ! ? (or their full-width and
// ellipsis forms) followed by a space or the end of the text. Decimal points
// ("1.5") are not followed by a space and do not count.
func sentences(text string) int {
	n := 0
	runes := []rune(strings.TrimSpace(text))
	for i, r := range runes {
		if !isSentenceEnd(r) {
			continue
		}
		last := i == len(runes)-1
		if last || (!isSentenceEnd(runes[i+1]) && isSpace(runes[i+1])) {
			n++
		}
	}
	if len(runes) > 0 && !isSentenceEnd(runes[len(runes)-1]) {
		n++
	}
	return n
}

func isSentenceEnd(r rune) bool {
	switch r {
	case '.', '!', '?', '…', '。', '！', '？':
		return true
	}
	return false
}

func isSpace(r rune) bool { return r == ' ' || r == '\t' || r == '\n' || r == '\r' }
