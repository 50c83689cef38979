package ivr

import (
	"context"
	"fmt"
	"strconv"
	"time"

	twilioapi "github.com/twilio/twilio-go/rest/api/v2010"
)

// TwilioCallStatus returns a Config.FetchCallStatus that asks Twilio's REST
// API (Fetch Call) for a call's status and duration; api is twilio-go's
// 2010 API service (twilioapi.NewApiServiceWithClient over a client.Client
// holding the account's credentials).
func TwilioCallStatus(api *twilioapi.ApiService) func(ctx context.Context, callSID string) (string, time.Duration, error) {
	return func(ctx context.Context, callSID string) (string, time.Duration, error) {
		if err := ctx.Err(); err != nil {
			return "", 0, err
		}
		// twilio-go takes no context; its HTTP client's timeout bounds it.
		call, err := api.FetchCall(callSID, nil)
		if err != nil {
			return "", 0, fmt.Errorf("twilio: fetch call %s: %w", callSID, err)
		}
		var status string
		var duration time.Duration
		if call.Status != nil {
			status = *call.Status
		}
		if call.Duration != nil {
			if secs, err := strconv.Atoi(*call.Duration); err == nil && secs >= 0 {
				duration = time.Duration(secs) * time.Second
			}
		}
		return status, duration, nil
	}
}

// Sweep runs SweepEnded every interval until ctx ends, for calls started
// more than grace ago (a status callback normally arrives seconds after the
// hang-up; grace leaves it time to). Every instance may sweep: closing a
// call goes through the same per-call lock and exactly-once record as its
// status callback, so a call closed twice is recorded once.
func (s *Server) Sweep(ctx context.Context, interval, grace time.Duration) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		n, err := s.SweepEnded(ctx, time.Now().Add(-grace))
		switch {
		case err != nil:
			s.cfg.Logger.Warn("sweep of calls without a status callback failed", "error", err)
		case n > 0:
			s.cfg.Logger.Info("closed calls whose status callback was lost", "calls", n)
		}
	}
}
