package mediastream

// Frame is one 20 ms slot of the call: what the caller heard (Outbound) and
// what their line sent (Inbound) over the same 20 ms. A track with no audio
// for the slot is nil. The slices are only valid during the onFrame call:
// they are the stream's own buffers, reused for later slots.
type Frame struct {
	MS       int64 // start of the slot, from the stream's start (media timestamps)
	Inbound  []byte
	Outbound []byte
}

// DefaultMaxLag is how far one track may run ahead before a slot the other
// track has not filled is emitted without it.
const DefaultMaxLag = 5 // slots: 100 ms

// ringSlots must exceed the largest lag; a power of two keeps % cheap.
const ringSlots = 16

// MaxLagLimit is the largest lag an Aligner can buffer.
const MaxLagLimit = ringSlots - 1

type slot struct {
	has  [2]bool
	data [2][FrameBytes]byte
}

// Aligner pairs the two tracks' frames by timestamp slot (timestamp / 20 ms,
// rounded). Twilio interleaves the tracks' media messages, each with its own
// timestamp, and one track may run a little ahead: a slot is emitted once
// every started track has filled it or moved past it, or once any track is
// more than maxLag slots ahead of it (the lagging track's frame is then
// missing from it, and counted as late if it arrives after all). Memory is
// a fixed ring of slots; nothing is allocated per frame.
type Aligner struct {
	tracks   [2]bool
	maxLag   int64
	emit     func(Frame)
	ring     [ringSlots]slot
	next     int64    // lowest slot not yet emitted
	last     [2]int64 // last slot each track filled, -1 before its first
	maxSeen  int64    // highest slot filled by any track
	buffered int      // slots in the ring holding data

	// Emitted counts frames passed to emit; Late counts frames dropped
	// because their slot was already emitted without them.
	Emitted, Late int64
}

// NewAligner returns an Aligner for the started tracks that calls emit with
// each slot, in order. maxLag outside 1..MaxLagLimit means DefaultMaxLag.
func NewAligner(tracks []Track, maxLag int, emit func(Frame)) *Aligner {
	a := &Aligner{emit: emit, maxLag: int64(maxLag), last: [2]int64{-1, -1}, maxSeen: -1}
	if maxLag < 1 || maxLag > MaxLagLimit {
		a.maxLag = DefaultMaxLag
	}
	for _, t := range tracks {
		a.tracks[t&1] = true
	}
	return a
}

// Push adds a media message's payload (whole 160-byte frames, the first at
// timestampMS) on track t.
func (a *Aligner) Push(t Track, timestampMS uint64, payload []byte) {
	t &= 1
	s := int64((timestampMS + FrameMS/2) / FrameMS)
	for len(payload) >= FrameBytes {
		// A track's frames take strictly increasing slots even when its
		// timestamps jitter onto the same slot.
		if s <= a.last[t] {
			s = a.last[t] + 1
		}
		a.place(t, s, payload[:FrameBytes])
		a.last[t] = s
		payload = payload[FrameBytes:]
		s++
		a.drain()
	}
}

func (a *Aligner) place(t Track, s int64, frame []byte) {
	if s < a.next {
		a.Late++
		return
	}
	for s >= a.next+ringSlots {
		if a.buffered == 0 {
			// A gap longer than the ring: nothing to emit in between.
			a.next = s - ringSlots + 1
			break
		}
		a.emitNext()
	}
	sl := &a.ring[s%ringSlots]
	if !sl.has[0] && !sl.has[1] {
		a.buffered++
	}
	sl.has[t] = true
	copy(sl.data[t][:], frame)
	if s > a.maxSeen {
		a.maxSeen = s
	}
}

// drain emits every slot at the head that is settled.
func (a *Aligner) drain() {
	for a.next <= a.maxSeen {
		sl := &a.ring[a.next%ringSlots]
		settled := a.maxSeen >= a.next+a.maxLag
		if !settled {
			settled = true
			for t := range a.tracks {
				if a.tracks[t] && !sl.has[t] && a.last[t] < a.next {
					settled = false
				}
			}
		}
		if !settled {
			return
		}
		a.emitNext()
	}
}

// emitNext emits slot next (if it holds anything) and moves past it.
func (a *Aligner) emitNext() {
	sl := &a.ring[a.next%ringSlots]
	if sl.has[0] || sl.has[1] {
		f := Frame{MS: a.next * FrameMS}
		if sl.has[Inbound] {
			f.Inbound = sl.data[Inbound][:]
		}
		if sl.has[Outbound] {
			f.Outbound = sl.data[Outbound][:]
		}
		a.Emitted++
		a.emit(f)
		sl.has = [2]bool{}
		a.buffered--
	}
	a.next++
}

// Flush emits every buffered slot: the stream has ended.
func (a *Aligner) Flush() {
	for a.next <= a.maxSeen {
		a.emitNext()
	}
}
