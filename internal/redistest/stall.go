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
	armed   atomic.Bool // commands seen while disarmed stall nothing
	mu      sync.Mutex
	resume  chan struct{} // closed by Release
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
			wg.Go(func() {
				defer r.Close()
				buf := make([]byte, 32<<10)
				for {
					n, err := c.Read(buf)
					if n > 0 {
						if p.armed.Load() && bytes.Contains(buf[:n], p.trigger) {
							stalled.Store(true)
						}
						if _, werr := r.Write(buf[:n]); werr != nil {
							return
						}
					}
					if err != nil {
						return
					}
				}
			})
			wg.Go(func() {
				defer c.Close()
				buf := make([]byte, 32<<10)
				for {
					n, err := r.Read(buf)
					if n > 0 {
						if stalled.Load() {
							p.mu.Lock()
							resume := p.resume
							p.mu.Unlock()
							<-resume
						}
						if _, werr := c.Write(buf[:n]); werr != nil {
							return
						}
					}
					if err != nil {
						return
					}
				}
			})
		}
	})
	return p
}

func (p *StallProxy) Addr() string { return p.ln.Addr().String() }

// Release lets every held reply through (the connections stay stalled-then-released).
func (p *StallProxy) Release() {
	p.mu.Lock()
	defer p.mu.Unlock()
	select {
	case <-p.resume:
	default:
		close(p.resume)
	}
}

// Arm makes the next commands containing the trigger stall their connections.
func (p *StallProxy) Arm() { p.armed.Store(true) }
