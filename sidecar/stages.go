package sidecar

import (
	"github.com/ghlproxy/ghlproxy/proxy"
)

// addStages builds the pipeline stages the configuration asks for and hooks them into the
// proxy and the admin endpoints.
func (s *Sidecar) addStages(pc *proxy.Config, admin *proxy.Admin) error {
	return nil
}
