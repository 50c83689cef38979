package main

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"os"
	"regexp"
	"strconv"
	"testing"
	"time"
)

// The drain fits Railway's window: its phases end 2 s or more before
// railway.toml's drainingSeconds, when Railway sends SIGKILL.
func TestDrainFitsRailway(t *testing.T) {
	toml, err := os.ReadFile("../../railway.toml")
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`(?m)^drainingSeconds\s*=\s*(\d+)`).FindSubmatch(toml)
	if m == nil {
		t.Fatal("railway.toml sets no drainingSeconds")
	}
	secs, _ := strconv.Atoi(string(m[1]))
	if window := time.Duration(secs) * time.Second; drainBudget() > window-2*time.Second {
		t.Errorf("the drain takes up to %s, railway.toml's drainingSeconds is %s: leave 2 s to exit", drainBudget(), window)
	}
}

// Phases run in order, each for its own budget; a failed phase does not
// keep the later ones from running.
func TestDrainPhases(t *testing.T) {
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	start := time.Now()
	var ran []string
	var deadlines []time.Duration
	phase := func(name string, fail bool) func(ctx context.Context) error {
		return func(ctx context.Context) error {
			ran = append(ran, name)
			dl, _ := ctx.Deadline()
			deadlines = append(deadlines, dl.Sub(start))
			if fail {
				return errors.New("boom")
			}
			return nil
		}
	}
	err := drain(log, []drainPhase{
		{"a", time.Hour, phase("a", false)},
		{"b", time.Hour, phase("b", true)},
		{"c", time.Hour, phase("c", false)},
	})
	if len(ran) != 3 || ran[0] != "a" || ran[1] != "b" || ran[2] != "c" {
		t.Fatalf("ran %v", ran)
	}
	for i, dl := range deadlines {
		if dl < time.Hour-time.Second || dl > time.Hour+time.Second {
			t.Errorf("phase %d's deadline %s after the start, want an hour", i, dl)
		}
	}
	if err == nil || err.Error() != "shutdown: b: boom" {
		t.Errorf("drain error %v", err)
	}
}
