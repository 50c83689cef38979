package ivr

import (
	"context"
	"io"
	"net/http"
	"strings"
)

// intake bounds how many webhooks are being checked and answered at once
// (Config.IntakeSlots), so that past capacity the work already admitted
// keeps the CPU it needs.
//
// A burst well past capacity is mostly webhooks that will be refused: each
// is parsed, its signature and shapes checked, and answered with the hold
// line. Unbounded, every one of them is a runnable goroutine at once, and
// each step of an admitted decision (a reply from Redis or PostgreSQL)
// waits its turn behind thousands of them: the decisions miss their
// deadlines, admission cuts its limit, and the instance records almost
// nothing while it answers hold lines (BenchmarkOverload: 7–13% of the
// steady rate kept). With a few slots, the webhooks beyond them wait parked
// instead of runnable, and a decision's next step runs almost at once.
//
// Slots are taken only while the instance is at capacity (work waits for
// admission); below it webhooks pass straight through.
//
// A webhook holds its slot only while it uses the CPU: its body is read
// before it takes one (a slow sender must not hold a slot while it
// trickles), and it gives the slot back when its handler starts waiting
// for admission and its decision (within), or when it returns.
type intake struct {
	slots chan struct{}
	// busy says whether the instance is at capacity; only then are slots
	// taken. Below it the bound would only cost: closed-loop decisions
	// through one slot measured 2,570/s where they ran 2,760-3,100/s
	// without it (BenchmarkDecisionsPostgresRedis), a webhook waiting on
	// another that was preempted holding the slot.
	busy func() bool
}

func newIntake(n int, busy func() bool) *intake {
	return &intake{slots: make(chan struct{}, n), busy: busy}
}

// intakePass is one webhook's slot; only its own request's goroutine uses
// it.
type intakePass struct {
	in   *intake
	left bool
	// body is the request's body, read already (parseWebhookForm takes it
	// from here rather than copy it again).
	body string
}

type intakeKey struct{}

// middleware reads the webhook's body, then holds a slot for the rest of
// the chain (see leaveIntake).
func (in *intake) middleware(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, err := readBody(http.MaxBytesReader(w, r.Body, maxWebhookBody))
		if err != nil {
			refuseBody(w, err)
			return
		}
		r.Body = io.NopCloser(strings.NewReader(body))

		p := &intakePass{in: in, body: body, left: true}
		if in.busy() {
			in.slots <- struct{}{}
			p.left = false
			defer p.leave()
		}
		next.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), intakeKey{}, p)))
	})
}

func (p *intakePass) leave() {
	if !p.left {
		p.left = true
		<-p.in.slots
	}
}

// leaveIntake gives the request's intake slot back early: its handler is
// about to wait (for admission, then for its decision) and needs no CPU
// meanwhile.
func leaveIntake(r *http.Request) {
	if p, ok := r.Context().Value(intakeKey{}).(*intakePass); ok {
		p.leave()
	}
}

// intakeBody returns the body intake read for r, if it did.
func intakeBody(r *http.Request) (string, bool) {
	p, ok := r.Context().Value(intakeKey{}).(*intakePass)
	if !ok {
		return "", false
	}
	return p.body, true
}
