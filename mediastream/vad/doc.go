// Package vad is voice activity detection for Twilio Media Streams
// started with track="both_tracks": 8 kHz G.711 μ-law, 20 ms frames of
// 160 bytes, the outbound track (what the caller hears: our disclosure,
// spoken by text-to-speech) and the inbound track (what the caller's line
// sends back) aligned frame by frame.
//
// One Detector per stream; Push each aligned pair of frames. It reports
// when the prompt's speech starts and ends on the outbound track, and when
// the caller's speech starts (backdated to where it began, to 5 ms) and
// ends (after a hangover) on the inbound track, all in milliseconds from
// the first pushed frame. Whether the answer was a barge-in is: caller
// onset before LastPromptEndMS, once the disclosure has finished.
//
// The inbound track carries more than the caller, and none of it may count:
//
//   - Line noise and hum: both tracks are high-passed at 200 Hz (removing
//     mains hum and its low harmonics, DC and most rumble), and an
//     adaptive noise floor (quick to fall, slow to rise, frozen while the
//     caller speaks) sets the level speech must clear (NoiseMarginDB).
//   - Echo of the disclosure: cancelled sample by sample (see cancel.go):
//     the echo's delay (0–250 ms) is found by cross-correlating the two
//     tracks, a 32-tap least-squares filter at that delay predicts the
//     echo ŷ, and the caller is looked for in what is left (the
//     residual), over a bound learnt relative to ŷ's level. Adaptation
//     freezes on frames the echo cannot explain (double talk), so a
//     caller talking over the disclosure is found as they start, even
//     within a few dB of a loud echo, from about 0.5 s after the echo is
//     first heard. Before that (or when the tracks do not correlate), the
//     bound is the level-domain one of echo.go: the upper level the
//     outbound explains at each delay, a conservative outbound − 3 dB
//     until learnt; a caller barging in then is found up to ~0.5 s late.
//     An echo that stays under the noise gate for seconds of loud
//     outbound is no echo at all.
//   - Background talk: distant talk is "well below" the caller, which we
//     take as ≥ 12–15 dB under a handset caller. Two gates enforce it: an
//     absolute one (voiced frames of an onset reach SpeechLevelDB, −30
//     dBFS; callers on the phone put their voiced frames at −25 to −15)
//     and a relative one: voiced sound that did not become an onset within
//     320 ms is remembered as background, and an onset must then clear its
//     level by BackgroundMarginDB (9 dB; the memory decays 1 dB/s).
//   - Coughs, clicks, DTMF and other non-speech: an onset needs MinVoicedMS
//     (80 ms) of voiced frames within twice that span. Voiced means
//     periodic (normalized autocorrelation ≥ 0.5 at a pitch lag of
//     2.5–16 ms): coughs, clicks and noise are not. DTMF is periodic but
//     puts nearly all its energy at one row and one column frequency
//     (Goertzel), which speech never does; such frames do not count.
//
// Cost: about 9 µs per Push on one core (both tracks; 4 µs before echo
// cancellation), no allocations; see BenchmarkPush and BenchmarkPushCall.
// A Detector holds about 92 KB, most of it 0.7 s of both tracks' samples.
package vad
