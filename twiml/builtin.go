package twiml

import (
	"fmt"

	"github.com/consentline/consentline/consent"
)

// BuiltinID and BuiltinVersion identify the built-in disclosure. Change the
// version with any change to its wording: the recorded sha256 already tells
// texts apart, the version tells people.
const (
	BuiltinID      = "hipaa-consent"
	BuiltinVersion = "2026-11-01"
)

// Builtin is the disclosure used when DISCLOSURE_FILE is not set: the HIPAA
// consent script in en-US (the default) and es-US (key 9). It is a careful
// starting point, not legal advice; a clinic's privacy officer should review
// it and ship their own wording as a DISCLOSURE_FILE (testdata/example.yaml
// is this same library in file form). Each call returns a new Library.
func Builtin() *Library {
	l, err := newLibrary([]*Script{builtinEnglish(), builtinSpanish()})
	if err != nil {
		// The built-ins are tested; this is a programming error.
		panic(fmt.Sprintf("twiml: built-in disclosure is invalid: %v", err))
	}
	return l
}

func builtinEnglish() *Script {
	return &Script{
		ID:       BuiltinID,
		Version:  BuiltinVersion,
		Language: "en-US",
		Voice:    "Polly.Joanna",
		Greeting: "Thank you for calling. Before we continue, we need to ask for your consent to use and share your health information.",
		Segments: []Segment{
			{MustHear: true, Text: "We are asking for your permission to use and share your protected health information for your treatment, to obtain payment for your care, and for our health care operations."},
			{MustHear: true, Text: "You may say no. If you do not agree, you will still receive care from us."},
			{Text: "Your information may be shared with the doctors, nurses and other providers who treat you, with your health plan or insurer to pay for your care, and with companies that help us run our practice, who are required by law to protect it."},
			{Text: "You may revoke this consent at any time by writing to our privacy officer. Revoking it does not undo uses or disclosures we made before we received your request."},
			{Text: "Our Notice of Privacy Practices explains these uses in detail, and you may ask us for a copy at any time."},
		},
		Question: "Do you agree? Say yes I agree, or press 1. Say no, or press 2.",
		Reprompts: []string{
			"Sorry, I did not understand. Do you agree? Say yes, or press 1. Say no, or press 2.",
			"Please press 1 if you agree, or press 2 if you do not agree.",
		},
		Confirm: "To confirm your answer, press 1 if you agree, or press 2 if you do not agree.",
		ReadBack: map[consent.Decision]string{
			consent.Granted:  "Thank you. We have recorded that you agree to the use and sharing of your health information for treatment, payment and health care operations. You may revoke this consent in writing at any time. Goodbye.",
			consent.Declined: "Thank you. We have recorded that you do not agree. This will not affect your care. If you change your mind, please tell our staff. Goodbye.",
		},
		NoResponse: "We did not receive an answer, so we have not recorded your consent. Our staff may ask you again at your next visit. Thank you for calling. Goodbye.",
		Hold:       "One moment, please.",
		DTMF:       map[string]consent.Intent{"1": consent.Agree, "2": consent.Decline},
		Hints:      []string{"yes I agree", "yes", "I agree", "I do", "no", "I do not agree", "I don't agree", "no thank you"},
	}
}

func builtinSpanish() *Script {
	return &Script{
		ID:             BuiltinID,
		Version:        BuiltinVersion,
		Language:       "es-US",
		Voice:          "Polly.Lupe",
		Greeting:       "Gracias por llamar. Antes de continuar, necesitamos pedirle su consentimiento para usar y compartir su información de salud.",
		LanguagePrompt: "Para español, oprima 9.",
		LanguageKey:    "9",
		Segments: []Segment{
			{MustHear: true, Text: "Le pedimos su permiso para usar y compartir su información de salud protegida para su tratamiento, para obtener el pago por su atención y para nuestras operaciones de atención médica."},
			{MustHear: true, Text: "Usted puede decir que no. Si no está de acuerdo, seguirá recibiendo atención de nosotros."},
			{Text: "Su información puede compartirse con los médicos, enfermeras y otros proveedores que le atienden, con su plan de salud o aseguradora para pagar su atención, y con las empresas que nos ayudan a administrar nuestra práctica, quienes están obligadas por ley a protegerla."},
			{Text: "Puede revocar este consentimiento en cualquier momento por escrito a nuestro oficial de privacidad. La revocación no deshace los usos o divulgaciones que hicimos antes de recibir su solicitud."},
			{Text: "Nuestro Aviso de Prácticas de Privacidad explica estos usos en detalle, y puede pedirnos una copia en cualquier momento."},
		},
		Question: "¿Está de acuerdo? Diga sí, estoy de acuerdo, u oprima 1. Diga no, u oprima 2.",
		Reprompts: []string{
			"Disculpe, no le entendí. ¿Está de acuerdo? Diga sí, u oprima 1. Diga no, u oprima 2.",
			"Por favor, oprima 1 si está de acuerdo, u oprima 2 si no está de acuerdo.",
		},
		Confirm: "Para confirmar su respuesta, oprima 1 si está de acuerdo, u oprima 2 si no está de acuerdo.",
		ReadBack: map[consent.Decision]string{
			consent.Granted:  "Gracias. Hemos registrado que usted está de acuerdo con el uso y la divulgación de su información de salud para tratamiento, pago y operaciones de atención médica. Puede revocar este consentimiento por escrito en cualquier momento. Adiós.",
			consent.Declined: "Gracias. Hemos registrado que usted no está de acuerdo. Esto no afectará su atención. Si cambia de opinión, por favor avísele a nuestro personal. Adiós.",
		},
		NoResponse: "No recibimos una respuesta, así que no hemos registrado su consentimiento. Nuestro personal podrá preguntarle de nuevo en su próxima visita. Gracias por llamar. Adiós.",
		Hold:       "Un momento, por favor.",
		DTMF:       map[string]consent.Intent{"1": consent.Agree, "2": consent.Decline},
		Hints:      []string{"sí estoy de acuerdo", "sí", "estoy de acuerdo", "de acuerdo", "no", "no estoy de acuerdo", "no gracias"},
	}
}
