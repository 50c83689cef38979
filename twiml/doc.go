// Package twiml holds the versioned disclosure scripts ConsentLine reads to
// callers and renders them, and every other spoken step of the call, to TwiML.
//
// # Scripts and libraries
//
// A Script is one version of the disclosure in one language; a Library is
// the same disclosure (one id) in one or more languages, the first being the
// default. Builtin is the HIPAA consent disclosure in en-US and es-US;
// DISCLOSURE_FILE replaces it with a clinic's own (Load).
//
// What a caller heard is identified by Script.Ref: id, version, language and
// the SHA-256 of DisclosureText, the segments then the question joined with
// "\n". Spoken text is normalized to single spaces when a script is loaded
// (Twilio speaks any whitespace as one space), so re-wrapping lines in the
// file does not change the hash, and changing one word does.
//
// # Disclosure file format
//
// DISCLOSURE_FILE is YAML (.yaml, .yml) or JSON (.json) with the same keys:
// a top-level "scripts" list. Unknown keys are errors, so a misspelt key
// cannot silently change what is spoken. A complete example with one
// language (testdata/example.yaml is the built-in library in this form):
//
//	scripts:
//	  - id: hipaa-consent          # required; the same in every script of the file
//	    version: "2026-11-01"      # required; change it whenever the wording changes
//	    language: en-US            # required; BCP-47, also the speech-recognition language
//	    voice: Polly.Joanna        # optional <Say voice>; empty is Twilio's default
//	    greeting: Thank you for calling.   # optional; opens the call
//	    # language_prompt and language_key: required on every script but the
//	    # first; the prompt is spoken, in this script's voice, after the
//	    # first script's greeting, e.g. "Para español, oprima 9." with key "9".
//	    segments:                  # required, at least one, spoken in order
//	      - must_hear: true        # cannot be interrupted; must-hear segments come first
//	        text: >-
//	          We are asking for your permission to use and share your health
//	          information for treatment, payment and health care operations.
//	      - text: You may revoke this consent in writing at any time.
//	    question: Do you agree? Say yes I agree, or press 1. Say no, or press 2.  # required
//	    reprompts:                 # required, one or two, asked after an unclear answer
//	      - Sorry, I did not understand. Do you agree? Say yes, or press 1. Say no, or press 2.
//	      - Please press 1 if you agree, or press 2 if you do not agree.
//	    confirm: To confirm, press 1 if you agree, or press 2 if you do not.  # required
//	    read_back:                 # required: both granted and declined
//	      granted: Thank you. We have recorded that you agree. Goodbye.
//	      declined: Thank you. We have recorded that you do not agree. Goodbye.
//	    no_response: We did not receive an answer. Goodbye.  # required
//	    hold: One moment, please.  # optional; spoken while a dependency is slow
//	    dtmf:                      # optional; this is the default. Quote the keys.
//	      "1": agree
//	      "2": decline
//	    hints: [yes I agree, "yes", I agree, "no", I do not agree]  # optional; no commas inside a hint
//
// Validation rejects: a missing id, version or language; no segments or an
// empty one; a must-hear segment after an interruptible one (it would be
// spoken out of order); an empty question, confirm, no_response or
// read_back.granted/declined; no re-prompt or more than MaxReprompts; dtmf
// keys other than one of 0-9 * #, values other than agree and decline, or a
// map with no key for either; a language key that is not unique, or that is
// a dtmf answer key of any script (pressing it must never read as an
// answer); scripts with different ids or the same language. Every error is
// one line naming the file, the script and the field, e.g.
//
//	disclosure file x.yaml: script hipaa-consent/es-US: question is empty
//
// # Timing
//
// Script.MustHearMS and Script.InterruptibleMS estimate speaking time from
// the text: 400 ms a word (about 150 words a minute) plus 350 ms per
// sentence. The IVR uses them to tell how much of the disclosure a caller
// had heard when they answered, until the media stream measures it.
//
// # TwiML
//
// Incoming, Disclosure, Reprompt, Confirm, ReadBack, NoResponse, Hold and
// Empty each return one complete TwiML document. Every <Say> carries the
// script's voice and language. Callback URLs must be absolute (built from
// PUBLIC_BASE_URL); they are XML-escaped, so query strings with & are safe.
package twiml
