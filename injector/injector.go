// Package injector is the Kubernetes mutating admission webhook that adds the ghlproxy
// sidecar to pods: AdmissionReview v1 in, JSONPatch out.
//
// The sidecar goes in as a native sidecar, an init container with restartPolicy Always, so
// the kubelet starts it (and waits for its startup probe) before the app's containers and
// stops it after them. The app's containers get the GHL base-URL variable pointing at it,
// unless they set that variable themselves. The container injected is not built here: the
// Helm chart renders it from its "ghlproxy.sidecar" template (the one users can include by
// hand) into a file this package reads, so the injected and the hand-written sidecar are
// the same. Per-pod annotations (see the Annotation constants) override parts of it.
//
// The patch only adds what it changes and never rewrites the pod it was given: the pod is
// decoded into this build's corev1 types, and a patch computed by diffing a re-encoded pod
// would drop fields newer than those types.
package injector

import (
	"encoding/json"
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"

	corev1 "k8s.io/api/core/v1"
)

// DefaultEnvVar is the app variable set to the sidecar's URL when none is configured.
const DefaultEnvVar = "GHL_BASE_URL"

// Port names the sidecar template must give its two ports: the injector reads the proxy port
// to build the app's base URL, and probes and monitors refer to the ops port by name.
const (
	ProxyPortName = "ghlproxy"
	OpsPortName   = "ghlproxy-ops"
)

// Environment variables of the sidecar that annotations set (configuration keys, as the
// README's Configuration table names them, with the GHLPROXY_ prefix).
const (
	envListen    = "GHLPROXY_LISTEN"
	envOpsListen = "GHLPROXY_OPS_LISTEN"
	envRedisURL  = "GHLPROXY_REDIS_URL"
	envRate      = "GHLPROXY_RATELIMIT_RATE"
	envLogLevel  = "GHLPROXY_LOG_LEVEL"
	envUpstream  = "GHLPROXY_UPSTREAM"
)

// Injector computes the patch that adds the sidecar to one pod. It holds no per-request
// state and is safe for concurrent use.
type Injector struct {
	sidecar corev1.Container
	envVars []string
}

// New returns an Injector for the sidecar container spec. envVar is the app variable (or a
// comma-separated list of them) set to the sidecar's URL; empty means DefaultEnvVar.
func New(sidecar corev1.Container, envVar string) (*Injector, error) {
	if sidecar.Name == "" {
		return nil, fmt.Errorf("injector: sidecar: container has no name")
	}
	if sidecar.Image == "" {
		return nil, fmt.Errorf("injector: sidecar: container %q has no image", sidecar.Name)
	}
	if portIndex(&sidecar, ProxyPortName) < 0 || portIndex(&sidecar, OpsPortName) < 0 {
		return nil, fmt.Errorf("injector: sidecar: container %q must declare ports named %q and %q", sidecar.Name, ProxyPortName, OpsPortName)
	}
	if envVar == "" {
		envVar = DefaultEnvVar
	}
	names, err := envVarNames(envVar)
	if err != nil {
		return nil, fmt.Errorf("injector: env var: %w", err)
	}
	// The kubelet treats an init container as a native sidecar only with this policy.
	always := corev1.ContainerRestartPolicyAlways
	sidecar.RestartPolicy = &always
	return &Injector{sidecar: sidecar, envVars: names}, nil
}

// LoadSidecar reads a container spec (JSON, as the chart renders it) from path.
func LoadSidecar(path string) (corev1.Container, error) {
	var c corev1.Container
	b, err := os.ReadFile(path)
	if err != nil {
		return c, fmt.Errorf("injector: sidecar: %w", err)
	}
	dec := json.NewDecoder(strings.NewReader(string(b)))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&c); err != nil {
		return c, fmt.Errorf("injector: sidecar %s: %w", path, err)
	}
	return c, nil
}

// Operation is one RFC 6902 JSON Patch operation; the injector only ever adds.
type Operation struct {
	Op    string `json:"op"`
	Path  string `json:"path"`
	Value any    `json:"value,omitempty"`
}

// Result is the outcome of Patch for one pod.
type Result struct {
	// Patch is empty when the pod is left as it is (already injected).
	Patch []Operation
	// Containers lists the app containers whose environment got the base URL.
	Containers []string
	// Warnings are returned to the client (kubectl prints them).
	Warnings []string
}

// Patch returns the operations that inject the sidecar into pod. A pod that already has the
// sidecar (a container of its name, or the status annotation) gets an empty patch, so running
// the webhook twice changes nothing. An error means an annotation is wrong or the sidecar
// cannot fit in the pod; its message names the annotation or the port.
func (in *Injector) Patch(pod *corev1.Pod) (Result, error) {
	var res Result
	if injected(pod, in.sidecar.Name) {
		return res, nil
	}
	sc, envVars, only, err := in.configure(pod.Annotations)
	if err != nil {
		return res, err
	}
	if err := checkPorts(pod, &sc); err != nil {
		return res, err
	}
	baseURL := "http://127.0.0.1:" + strconv.Itoa(int(sc.Ports[portIndex(&sc, ProxyPortName)].ContainerPort))

	// First among the init containers, so init containers after it can reach GHL too.
	if len(pod.Spec.InitContainers) == 0 {
		res.Patch = append(res.Patch, Operation{"add", "/spec/initContainers", []corev1.Container{sc}})
	} else {
		res.Patch = append(res.Patch, Operation{"add", "/spec/initContainers/0", sc})
	}

	for i, c := range pod.Spec.Containers {
		if only != nil && !slices.Contains(only, c.Name) {
			continue
		}
		var add []corev1.EnvVar
		for _, name := range envVars {
			if !hasEnv(c.Env, name) {
				add = append(add, corev1.EnvVar{Name: name, Value: baseURL})
			}
		}
		if len(add) == 0 {
			res.Warnings = append(res.Warnings, fmt.Sprintf("ghlproxy: container %q sets %s itself; left unchanged", c.Name, strings.Join(envVars, ", ")))
			continue
		}
		base := "/spec/containers/" + strconv.Itoa(i) + "/env"
		if len(c.Env) == 0 {
			res.Patch = append(res.Patch, Operation{"add", base, add})
		} else {
			for _, e := range add {
				res.Patch = append(res.Patch, Operation{"add", base + "/-", e})
			}
		}
		res.Containers = append(res.Containers, c.Name)
	}
	for _, name := range only {
		if !slices.ContainsFunc(pod.Spec.Containers, func(c corev1.Container) bool { return c.Name == name }) {
			res.Warnings = append(res.Warnings, fmt.Sprintf("ghlproxy: %s names container %q, which the pod does not have", AnnotationContainers, name))
		}
	}

	if len(pod.Annotations) == 0 {
		res.Patch = append(res.Patch, Operation{"add", "/metadata/annotations", map[string]string{AnnotationStatus: StatusInjected}})
	} else {
		res.Patch = append(res.Patch, Operation{"add", "/metadata/annotations/" + escapePointer(AnnotationStatus), StatusInjected})
	}
	return res, nil
}

// injected reports whether pod already carries the sidecar.
func injected(pod *corev1.Pod, name string) bool {
	if pod.Annotations[AnnotationStatus] == StatusInjected {
		return true
	}
	has := func(c corev1.Container) bool { return c.Name == name }
	return slices.ContainsFunc(pod.Spec.InitContainers, has) || slices.ContainsFunc(pod.Spec.Containers, has)
}

// checkPorts refuses a pod whose containers declare a port the sidecar listens on: both
// would share the pod's network namespace and one of them would fail to bind.
func checkPorts(pod *corev1.Pod, sc *corev1.Container) error {
	for _, sp := range sc.Ports {
		for _, list := range [][]corev1.Container{pod.Spec.InitContainers, pod.Spec.Containers} {
			for _, c := range list {
				for _, p := range c.Ports {
					if p.ContainerPort == sp.ContainerPort && protocol(p) == protocol(sp) {
						ann := AnnotationPort
						if sp.Name == OpsPortName {
							ann = AnnotationOpsPort
						}
						return fmt.Errorf("container %q declares port %d, which the ghlproxy sidecar uses (port %s); move the sidecar with annotation %s",
							c.Name, p.ContainerPort, sp.Name, ann)
					}
				}
			}
		}
	}
	return nil
}

// protocol defaults an empty protocol the way the API server does.
func protocol(p corev1.ContainerPort) corev1.Protocol {
	if p.Protocol == "" {
		return corev1.ProtocolTCP
	}
	return p.Protocol
}

func hasEnv(env []corev1.EnvVar, name string) bool {
	return slices.ContainsFunc(env, func(e corev1.EnvVar) bool { return e.Name == name })
}

func portIndex(c *corev1.Container, name string) int {
	return slices.IndexFunc(c.Ports, func(p corev1.ContainerPort) bool { return p.Name == name })
}

// setEnv sets name on c, replacing an entry of that name rather than adding a second one
// (the kubelet would use the last, but a reader of the pod spec would not know which).
func setEnv(c *corev1.Container, e corev1.EnvVar) {
	if i := slices.IndexFunc(c.Env, func(x corev1.EnvVar) bool { return x.Name == e.Name }); i >= 0 {
		c.Env[i] = e
		return
	}
	c.Env = append(c.Env, e)
}

// escapePointer escapes one JSON Pointer reference token (RFC 6901).
func escapePointer(s string) string {
	return strings.NewReplacer("~", "~0", "/", "~1").Replace(s)
}
