// Package twiliosim plays Twilio's side of a voice call against a
// ConsentLine server: it signs webhooks exactly as Twilio does, posts them
// form-encoded, and follows the URLs the returned TwiML names. The demo
// command and the tests use it; nothing in it talks to the real Twilio.
package twiliosim

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha1"
	"encoding/base64"
	"encoding/xml"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"sort"
	"strings"
)

// Sign computes X-Twilio-Signature: base64(HMAC-SHA1(auth token, URL +
// each POST parameter as key+value in key order)).
func Sign(authToken, fullURL string, params url.Values) string {
	keys := make([]string, 0, len(params))
	for k := range params {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	mac := hmac.New(sha1.New, []byte(authToken))
	io.WriteString(mac, fullURL)
	for _, k := range keys {
		for _, v := range params[k] {
			io.WriteString(mac, k)
			io.WriteString(mac, v)
		}
	}
	return base64.StdEncoding.EncodeToString(mac.Sum(nil))
}

// Twilio sends signed webhooks to one ConsentLine server.
type Twilio struct {
	// PublicBaseURL is the URL the server believes Twilio reaches it at;
	// signatures are computed on it.
	PublicBaseURL string
	// Target, when set, is where requests really go (scheme and host),
	// e.g. a local listener behind a pretend public URL.
	Target     string
	AuthToken  string
	AccountSID string
	HTTP       *http.Client
}

// Post signs params for fullURL (a public URL) and posts them.
func (t *Twilio) Post(ctx context.Context, fullURL string, params url.Values) (status int, body []byte, err error) {
	target := fullURL
	if t.Target != "" {
		target = strings.TrimRight(t.Target, "/") + strings.TrimPrefix(fullURL, strings.TrimRight(t.PublicBaseURL, "/"))
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, target, strings.NewReader(params.Encode()))
	if err != nil {
		return 0, nil, err
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.Header.Set("X-Twilio-Signature", Sign(t.AuthToken, fullURL, params))
	client := t.HTTP
	if client == nil {
		client = http.DefaultClient
	}
	resp, err := client.Do(req)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	body, err = io.ReadAll(resp.Body)
	return resp.StatusCode, body, err
}

// Call is one call in progress, with the parameters Twilio sends on every
// webhook of it.
type Call struct {
	Twilio *Twilio
	SID    string
	From   string
	To     string
}

// Params returns the parameters Twilio sends with every webhook of the call,
// plus extra.
func (c *Call) Params(extra url.Values) url.Values {
	p := url.Values{
		"CallSid":    {c.SID},
		"AccountSid": {c.Twilio.AccountSID},
		"From":       {c.From},
		"To":         {c.To},
		"Caller":     {c.From},
		"Called":     {c.To},
		"Direction":  {"inbound"},
		"CallStatus": {"in-progress"},
		"ApiVersion": {"2010-04-01"},
	}
	for k, v := range extra {
		p[k] = v
	}
	return p
}

// Start posts the incoming-call webhook at path and returns its TwiML,
// followed as Follow does.
func (c *Call) Start(ctx context.Context, path string) (*Response, error) {
	p := c.Params(url.Values{"CallStatus": {"ringing"}})
	resp, err := c.TwiML(ctx, strings.TrimRight(c.Twilio.PublicBaseURL, "/")+path, p)
	if err != nil {
		return nil, err
	}
	return c.Follow(ctx, resp)
}

// Follow does what Twilio does at a <Redirect> that ends a document (with
// media streams on, the one marking the end of the disclosure's must-hear
// part): it fetches the next document, at once rather than after the
// speech before it. The Response holds the verbs of every document in
// order, as the caller hears them. A document not ending in a redirect is
// returned as it is.
func (c *Call) Follow(ctx context.Context, resp *Response) (*Response, error) {
	for range 3 {
		last := len(resp.Verbs) - 1
		if last < 0 || resp.Verbs[last].Name != "Redirect" {
			break
		}
		next, err := c.TwiML(ctx, resp.Verbs[last].Text, c.Params(nil))
		if err != nil {
			return nil, err
		}
		resp = &Response{Raw: append(append(resp.Raw, '\n'), next.Raw...), Verbs: append(resp.Verbs[:last:last], next.Verbs...)}
	}
	return resp, nil
}

// TwiML posts to fullURL and parses the TwiML answer; a non-200 answer is an
// error (Twilio would play its error message to the caller).
func (c *Call) TwiML(ctx context.Context, fullURL string, params url.Values) (*Response, error) {
	status, body, err := c.Twilio.Post(ctx, fullURL, params)
	if err != nil {
		return nil, err
	}
	if status != http.StatusOK {
		return nil, fmt.Errorf("POST %s: status %d: %s", fullURL, status, bytes.TrimSpace(body))
	}
	return ParseResponse(body)
}

// Response is a parsed TwiML document.
type Response struct {
	Raw   []byte
	Verbs []Verb
}

// Verb is one TwiML element.
type Verb struct {
	Name     string
	Attrs    map[string]string
	Text     string
	Children []Verb
}

// Attr returns an attribute's value ("" when absent).
func (v Verb) Attr(name string) string { return v.Attrs[name] }

// ParseResponse parses a TwiML <Response>.
func ParseResponse(doc []byte) (*Response, error) {
	var root node
	if err := xml.Unmarshal(doc, &root); err != nil {
		return nil, fmt.Errorf("TwiML does not parse: %w", err)
	}
	if root.XMLName.Local != "Response" {
		return nil, fmt.Errorf("TwiML root is <%s>, want <Response>", root.XMLName.Local)
	}
	return &Response{Raw: doc, Verbs: root.verbs()}, nil
}

type node struct {
	XMLName  xml.Name
	Attrs    []xml.Attr `xml:",any,attr"`
	Text     string     `xml:",chardata"`
	Children []node     `xml:",any"`
}

func (n node) verbs() []Verb {
	out := make([]Verb, 0, len(n.Children))
	for _, c := range n.Children {
		v := Verb{Name: c.XMLName.Local, Attrs: map[string]string{}, Text: strings.TrimSpace(c.Text), Children: c.verbs()}
		for _, a := range c.Attrs {
			v.Attrs[a.Name.Local] = a.Value
		}
		out = append(out, v)
	}
	return out
}

// Find returns the first verb named name, searching depth first.
func (r *Response) Find(name string) (Verb, bool) { return find(r.Verbs, name) }

func find(vs []Verb, name string) (Verb, bool) {
	for _, v := range vs {
		if v.Name == name {
			return v, true
		}
		if c, ok := find(v.Children, name); ok {
			return c, true
		}
	}
	return Verb{}, false
}

// SpeechGather returns the Gather that listens for speech.
func (r *Response) SpeechGather() (Verb, bool) {
	for _, v := range r.Verbs {
		if v.Name == "Gather" && strings.Contains(v.Attr("input"), "speech") {
			return v, true
		}
	}
	return Verb{}, false
}

// Spoken lists the text of every <Say>, in order, with whether it is inside
// a <Gather> (so the caller can interrupt it).
func (r *Response) Spoken() []Said {
	var out []Said
	var walk func(vs []Verb, inGather bool)
	walk = func(vs []Verb, inGather bool) {
		for _, v := range vs {
			if v.Name == "Say" {
				out = append(out, Said{Text: v.Text, Interruptible: inGather, Language: v.Attr("language")})
			}
			walk(v.Children, inGather || v.Name == "Gather")
		}
	}
	walk(r.Verbs, false)
	return out
}

// Said is one spoken line of TwiML.
type Said struct {
	Text          string
	Language      string
	Interruptible bool
}

// HangsUp reports whether the TwiML ends the call.
func (r *Response) HangsUp() bool {
	_, ok := r.Find("Hangup")
	return ok
}
