package mediastream_test

import (
	"bytes"
	"context"
	"encoding/base64"
	"fmt"
	"net/http/httptest"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/consentline/consentline/internal/democall"
	"github.com/consentline/consentline/ivr/twiliosim"
	"github.com/consentline/consentline/mediastream"
)

// mediaTemplate is a media message whose numbers are fixed-width (Twilio's
// digit strings allow leading zeros), so a benchmark can count them up in
// place without allocating.
type mediaTemplate struct {
	msg                             []byte
	seqAt, chunkAt, tsAt, payloadAt int
}

const numWidth = 12

func newMediaTemplate(streamSID, track string) *mediaTemplate {
	z := strings.Repeat("0", numWidth)
	msg := []byte(fmt.Sprintf(`{"event":"media","sequenceNumber":"%s","media":{"track":"%s","chunk":"%s","timestamp":"%s","payload":"%s"},"streamSid":"%s"}`,
		z, track, z+"1", z+"2", base64.StdEncoding.EncodeToString(frameOf(0xFF)), streamSID))
	return &mediaTemplate{
		msg:       msg,
		seqAt:     bytes.Index(msg, []byte(`"sequenceNumber":"`)) + len(`"sequenceNumber":"`),
		chunkAt:   bytes.Index(msg, []byte(`"chunk":"`)) + len(`"chunk":"`),
		tsAt:      bytes.Index(msg, []byte(`"timestamp":"`)) + len(`"timestamp":"`),
		payloadAt: bytes.Index(msg, []byte(`"payload":"`)) + len(`"payload":"`),
	}
}

// setPayload replaces the frame's payload (base64 of 160 bytes, always the
// same length).
func (m *mediaTemplate) setPayload(b64 []byte) { copy(m.msg[m.payloadAt:], b64) }

func (m *mediaTemplate) set(seq, chunk, ts uint64) []byte {
	putDigits(m.msg[m.seqAt:m.seqAt+numWidth], seq)
	putDigits(m.msg[m.chunkAt:m.chunkAt+numWidth+1], chunk)
	putDigits(m.msg[m.tsAt:m.tsAt+numWidth+1], ts)
	return m.msg
}

func putDigits(dst []byte, n uint64) {
	for i := len(dst) - 1; i >= 0; i-- {
		dst[i] = byte('0' + n%10)
		n /= 10
	}
}

// BenchmarkParseAlign is the per-message cost of a stream: parse and check
// one media message, decode its payload and align it with the other track.
func BenchmarkParseAlign(b *testing.B) {
	p := mediastream.NewParser(testAccount)
	if _, err := p.Parse([]byte(startMsg(1, testStream, testCall, testAccount))); err != nil {
		b.Fatal(err)
	}
	var frames int
	a := mediastream.NewAligner([]mediastream.Track{mediastream.Inbound, mediastream.Outbound}, 0, func(mediastream.Frame) { frames++ })
	tracks := [2]*mediaTemplate{newMediaTemplate(testStream, "inbound"), newMediaTemplate(testStream, "outbound")}
	b.ReportAllocs()
	b.SetBytes(int64(len(tracks[0].msg)))
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		slot := uint64(i / 2)
		msg := tracks[i%2].set(uint64(i)+2, slot+1, slot*20)
		m, err := p.Parse(msg)
		if err != nil {
			b.Fatal(err)
		}
		a.Push(m.Media.Track, m.Media.Timestamp, m.Media.Payload)
	}
	b.StopTimer()
	if b.N > 20 && frames < b.N/2-mediastream.DefaultMaxLag {
		b.Fatalf("%d frames for %d messages", frames, b.N)
	}
}

// The concurrent-streams benchmark plays its streams from a child process
// (this test binary, started with benchClientEnv set) so that the server's
// CPU time is measured alone.
const benchClientEnv = "MEDIASTREAM_BENCH_CLIENT"

// BenchmarkConcurrentStreams holds 1,000 streams at Twilio's pace (50 media
// messages a second per track, both tracks) against one Server with a no-op
// consumer and reports the server process's CPU seconds per wall second
// and its memory per stream. Run it once: -bench ConcurrentStreams
// -benchtime 1x. A figure, noisy on a shared machine.
//
// Two variants: "transport" (parse, check and align only) and "measured"
// (the product's consumer, mediastream.Calls: the VAD on both tracks, the
// measurement saved to the embedded database at each onset, the answer's
// audio kept and sealed), the client playing the demo's generated call
// (disclosure, echo, an answer) on a loop.
func BenchmarkConcurrentStreams(b *testing.B) {
	b.Run("transport", func(b *testing.B) {
		benchConcurrentStreams(b, func(b *testing.B) func(context.Context, mediastream.Start) (func(mediastream.Frame), func(mediastream.End), error) {
			return func(context.Context, mediastream.Start) (func(mediastream.Frame), func(mediastream.End), error) {
				n := 0
				return func(mediastream.Frame) { n++ }, func(mediastream.End) {}, nil
			}
		})
	})
	b.Run("measured", func(b *testing.B) {
		benchConcurrentStreams(b, func(b *testing.B) func(context.Context, mediastream.Start) (func(mediastream.Frame), func(mediastream.End), error) {
			r := newCallRig(b, nil)
			return r.calls.Open
		})
	})
}

func benchConcurrentStreams(b *testing.B, consumer func(*testing.B) func(context.Context, mediastream.Start) (func(mediastream.Frame), func(mediastream.End), error)) {
	const window = 3 * time.Second
	// MEDIASTREAM_BENCH_STREAMS overrides the 1,000 streams, e.g. to find
	// the cost per stream below the point where the machine (which also
	// runs the client) saturates.
	streams := 1000
	if n, err := strconv.Atoi(os.Getenv("MEDIASTREAM_BENCH_STREAMS")); err == nil && n > 0 {
		streams = n
	}
	for i := 0; i < b.N; i++ {
		var mu sync.Mutex
		frames := 0
		open := consumer(b)
		srv, err := mediastream.NewServer(mediastream.Config{
			PublicURL: publicURL, AuthToken: testToken, AccountSID: testAccount,
			MaxStreams: streams + 10, ReadTimeout: 10 * time.Second,
			Open: func(ctx context.Context, st mediastream.Start) (func(mediastream.Frame), func(mediastream.End), error) {
				onFrame, onEnd, err := open(ctx, st)
				return onFrame, func(e mediastream.End) {
					if onEnd != nil {
						onEnd(e)
					}
					mu.Lock()
					frames += int(e.Frames)
					mu.Unlock()
				}, err
			},
		})
		if err != nil {
			b.Fatal(err)
		}
		ts := httptest.NewServer(srv)
		runtime.GC()
		var before runtime.MemStats
		runtime.ReadMemStats(&before)

		seconds := int((window + 4*time.Second) / time.Second)
		child := exec.Command(os.Args[0], "-test.run=^$")
		child.Env = append(os.Environ(), fmt.Sprintf("%s=%s,%d,%d", benchClientEnv, strings.TrimPrefix(ts.URL, "http://"), streams, seconds))
		child.Stdout, child.Stderr = os.Stderr, os.Stderr
		if err := child.Start(); err != nil {
			b.Fatal(err)
		}
		deadline := time.Now().Add(20 * time.Second)
		for srv.Stats().Ended[mediastream.ReasonStop] == 0 && openStreams(srv) < int64(streams) {
			if time.Now().After(deadline) {
				b.Fatalf("only %d streams opened", openStreams(srv))
			}
			time.Sleep(10 * time.Millisecond)
		}
		runtime.GC()
		var during runtime.MemStats
		runtime.ReadMemStats(&during)
		var r0, r1 syscall.Rusage
		_ = syscall.Getrusage(syscall.RUSAGE_SELF, &r0)
		t0 := time.Now()
		time.Sleep(window)
		_ = syscall.Getrusage(syscall.RUSAGE_SELF, &r1)
		wall := time.Since(t0)
		active := srv.Stats().Active
		if err := child.Wait(); err != nil {
			b.Fatalf("client: %v", err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		if err := srv.Shutdown(ctx); err != nil {
			b.Fatal(err)
		}
		cancel()
		ts.Close()
		st := srv.Stats()
		if st.Ended[mediastream.ReasonStop] != uint64(streams) {
			b.Fatalf("ended %v, malformed %v", st.Ended, st.Malformed)
		}
		cpu := time.Duration(r1.Utime.Nano() + r1.Stime.Nano() - r0.Utime.Nano() - r0.Stime.Nano())
		b.ReportMetric(cpu.Seconds()/wall.Seconds(), "cpu-s/wall-s")
		if active > 0 {
			b.ReportMetric(cpu.Seconds()/wall.Seconds()/float64(active)*1e6, "µcpu-s/s/stream")
		}
		b.ReportMetric(float64(int64(during.HeapInuse)-int64(before.HeapInuse))/float64(streams), "heap-B/stream")
		b.ReportMetric(float64(int64(during.StackInuse)-int64(before.StackInuse))/float64(streams), "stack-B/stream")
		b.ReportMetric(float64(active), "active-streams")
		b.ReportMetric(float64(frames)/float64(streams), "frames/stream")
	}
}

// openStreams counts streams whose consumer was opened.
func openStreams(srv *mediastream.Server) int64 { return srv.Stats().Active }

// runBenchClient plays the concurrent-streams benchmark's streams: spec is
// "host:port,streams,seconds".
func runBenchClient(spec string) error {
	parts := strings.Split(spec, ",")
	if len(parts) != 3 {
		return fmt.Errorf("bad spec %q", spec)
	}
	n, _ := strconv.Atoi(parts[1])
	seconds, _ := strconv.Atoi(parts[2])
	url := "ws://" + parts[0] + "/voice/stream"
	sig := twiliosim.Sign(testToken, publicURL, nil)
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := benchStream(url, sig, i, seconds); err != nil {
				errs <- err
			}
		}()
		time.Sleep(time.Millisecond) // stagger, as calls arrive
	}
	wg.Wait()
	close(errs)
	return <-errs
}

func benchStream(url, sig string, i, seconds int) error {
	hdr := map[string][]string{"X-Twilio-Signature": {sig}}
	c, _, err := websocket.DefaultDialer.Dial(url, hdr)
	if err != nil {
		return err
	}
	defer c.Close()
	streamSID, callSID := sid("MZ", i), sid("CA", i)
	for _, m := range []string{connectedMsg, startMsg(1, streamSID, callSID, testAccount)} {
		if err := c.WriteMessage(websocket.TextMessage, []byte(m)); err != nil {
			return err
		}
	}
	tracks := [2]*mediaTemplate{newMediaTemplate(streamSID, "inbound"), newMediaTemplate(streamSID, "outbound")}
	audio := demoPayloads()
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	seq := uint64(2)
	slots := uint64(seconds * 50)
	for slot := uint64(0); slot < slots; slot++ {
		<-tick.C
		for t, tr := range tracks {
			// Each stream starts at its own point of the call.
			tr.setPayload(audio[t][(int(slot)+i*7)%len(audio[t])])
			if err := c.WriteMessage(websocket.TextMessage, tr.set(seq, slot+1, slot*20)); err != nil {
				return err
			}
			seq++
		}
	}
	if err := c.WriteMessage(websocket.TextMessage, []byte(stopMsg(int(seq), streamSID, callSID, testAccount))); err != nil {
		return err
	}
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	for {
		if _, _, err := c.ReadMessage(); err != nil {
			return nil
		}
	}
}

var demoFrames struct {
	once sync.Once
	b64  [2][][]byte // inbound, outbound
}

// demoPayloads is the demo's generated call as base64 frame payloads.
func demoPayloads() [2][][]byte {
	demoFrames.once.Do(func() {
		c := democall.Generate()
		for t, track := range [2][]byte{c.Inbound, c.Outbound} {
			for at := 0; at+mediastream.FrameBytes <= len(track); at += mediastream.FrameBytes {
				demoFrames.b64[t] = append(demoFrames.b64[t], []byte(base64.StdEncoding.EncodeToString(track[at:at+mediastream.FrameBytes])))
			}
		}
	})
	return demoFrames.b64
}
