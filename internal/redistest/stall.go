package redistest

import (
	"bytes"
	"net"
	"sync"
	"sync/atomic"
	"testing"
)

// StallProxy is a TCP proxy in front of a real Redis that passes every command on but, once
// a command containing its trigger went through a connection, holds back that connection's
// replies until Release: a store that Redis applied but whose reply never came back in
// time, as on a loaded network. An empty trigger matches every command.
type StallProxy struct {
	ln      net.Listener
	trigger []byte
	armed   atomic.Bool   // commands seen while disarmed stall nothing
	resume  chan struct{} // closed by Release
	release sync.Once
}

// StartStallProxy starts a proxy to target, armed: the first command containing trigger
// stalls its connection.
func StartStallProxy(t testing.TB, target, trigger string) *StallProxy {
	p := StartPassProxy(t, target, trigger)
	p.Arm()
	return p
}

// StartPassProxy starts the proxy disarmed: it passes everything until Arm.
func StartPassProxy(t testing.TB, target, trigger string) *StallProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &StallProxy{ln: ln, trigger: []byte(trigger), resume: make(chan struct{})}
	var wg sync.WaitGroup
	t.Cleanup(func() { ln.Close(); p.Release(); wg.Wait() })
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			r, err := net.Dial("tcp", target)
			if err != nil {
				c.Close()
				continue
			}
			var stalled atomic.Bool
			// Commands go on at once, noting the trigger; replies wait once it was seen.
			wg.Go(func() {
				relay(r, c, func(cmd []byte) {
					if p.armed.Load() && bytes.Contains(cmd, p.trigger) {
						stalled.Store(true)
					}
				})
			})
			wg.Go(func() {
				relay(c, r, func([]byte) {
					if stalled.Load() {
						<-p.resume
					}
				})
			})
		}
	})
	return p
}

func (p *StallProxy) Addr() string { return p.ln.Addr().String() }

// Release lets every held reply through (the connections stay stalled-then-released).
func (p *StallProxy) Release() { p.release.Do(func() { close(p.resume) }) }

// relay copies src to dst, calling before with each chunk before it is written, until
// either side fails; then it closes dst.
func relay(dst, src net.Conn, before func([]byte)) {
	defer dst.Close()
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			before(buf[:n])
			if _, werr := dst.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}

// Arm makes the next commands containing the trigger stall their connections.
func (p *StallProxy) Arm() { p.armed.Store(true) }
