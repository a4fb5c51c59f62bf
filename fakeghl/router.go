package fakeghl

import "strings"

// route is one operation the stand-in answers.
type route struct {
	method, template string
	label            string // "GET /contacts/{contactId}": the Stats key
	handle           handler
	// answers are the generated bodies for the v2 (index 0) and v3 (index 1) specs.
	answers [2]*answer
}

// maxParams bounds path parameters; GHL templates have at most 4.
const maxParams = 8

// tree matches method and path to a route without regexps or allocation: one node per
// path segment, a static child preferred over the parameter child, with backtracking
// (GET /contacts/search falls back to /contacts/{contactId} when only POST is static).
type tree struct{ root node }

type node struct {
	static map[string]*node
	param  *node
	routes map[string]*route // by method
}

// add returns the route for method and template, creating it.
func (t *tree) add(method, template string) *route {
	n := &t.root
	for _, seg := range segments(template) {
		if strings.HasPrefix(seg, "{") {
			if n.param == nil {
				n.param = &node{}
			}
			n = n.param
			continue
		}
		if n.static == nil {
			n.static = make(map[string]*node)
		}
		c := n.static[seg]
		if c == nil {
			c = &node{}
			n.static[seg] = c
		}
		n = c
	}
	if n.routes == nil {
		n.routes = make(map[string]*route)
	}
	r := n.routes[method]
	if r == nil {
		r = &route{method: method, template: template, label: method + " " + template}
		n.routes[method] = r
	}
	return r
}

func segments(path string) []string {
	path = strings.Trim(path, "/")
	if path == "" {
		return nil
	}
	return strings.Split(path, "/")
}

// match finds the route of method and path; params receives the parameter values in path
// order (its backing array should have room for maxParams).
func (t *tree) match(method, path string, params []string) (*route, []string) {
	path = strings.Trim(path, "/")
	return t.root.match(method, path, params)
}

func (n *node) match(method, path string, params []string) (*route, []string) {
	if path == "" {
		if r := n.routes[method]; r != nil {
			return r, params
		}
		return nil, params
	}
	seg, rest, _ := strings.Cut(path, "/")
	if c := n.static[seg]; c != nil {
		if r, ps := c.match(method, rest, params); r != nil {
			return r, ps
		}
	}
	if n.param != nil && seg != "" && len(params) < maxParams {
		if r, ps := n.param.match(method, rest, append(params, seg)); r != nil {
			return r, ps
		}
	}
	return nil, params
}
