//go:build race

package integration

// raceEnabled: the race detector slows everything several times over, so
// tests that overload the machine on purpose relax their timing checks.
const raceEnabled = true
