package routes

import "testing"

// TestStateSetsAreWriteRoutes keeps the hand-written list of state-setting POSTs in step
// with the table: each is a POST write with an entity.
func TestStateSetsAreWriteRoutes(t *testing.T) {
	tbl := New()
	for tmpl := range stateSets {
		r := tbl.Lookup("POST", tmpl)
		if r == nil || r.Policy != Write || r.Entity == "" {
			t.Errorf("state set %s is not a POST write route with an entity in the table: %+v", tmpl, r)
		}
	}
}
