package dedupe

import (
	"fmt"
	"time"
)

// LeaderLostError is returned to callers waiting on a call whose leader replica vanished
// (its lease expired without an answer). Sent reports that the call was a write already
// marked sent: it may have been applied upstream, so nobody sends it again within the
// window. Reads, and writes never sent, are taken over by a waiter instead, so callers see
// Sent == false only when taking over failed too.
type LeaderLostError struct {
	Sent bool
}

func (e *LeaderLostError) Error() string {
	if e.Sent {
		return "dedupe: the replica handling the first identical request stopped after sending it upstream; it may have been applied, check before retrying"
	}
	return "dedupe: the replica handling the first identical request stopped before sending it"
}

// UnconfirmedError is the replay of a write that was sent upstream but got no answer (the
// connection broke or timed out): it may have been applied, so identical requests within
// the window are not sent again.
type UnconfirmedError struct {
	Cause string // the first call's error
}

func (e *UnconfirmedError) Error() string {
	return "dedupe: an identical write was sent upstream within the fold window and got no answer (" + e.Cause + "); it may have been applied, check before retrying"
}

// WaitError is returned to a caller that waited Config.WaitBound for an identical call led
// by another replica that is still running.
type WaitError struct {
	Waited time.Duration
}

func (e *WaitError) Error() string {
	return fmt.Sprintf("dedupe: waited %s for an identical request in flight on another replica", e.Waited.Round(time.Millisecond))
}

// RemoteError is the error of an identical call led by another replica, shared with the
// callers that waited for it. Nothing of it is replayed.
type RemoteError struct {
	Msg string
}

func (e *RemoteError) Error() string {
	return "dedupe: the identical request in flight failed: " + e.Msg
}
