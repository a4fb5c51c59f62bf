// Package charts has no code: its tests check what deploys ghlproxy — the Helm chart, the
// Dockerfile, the Grafana dashboard and the alert rules — against the binary they deploy.
//
// The tests that need external tools (helm, promtool, dockerfile-utils) skip when a tool is
// missing, and fail instead when CI=true. scripts/k8s-tools.sh installs them all.
package charts

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	policyv1 "k8s.io/api/policy/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"sigs.k8s.io/yaml"
)

const chartDir = "ghlproxy"

// kubeVersion is the cluster version helm template assumes: its default (1.20) is older than
// native sidecars, which the chart requires.
const kubeVersion = "1.33.0"

// tool returns the path of an external command, looked up on PATH, in GOPATH/bin (where
// `go install` puts helm) and in the npm prefix scripts/k8s-tools.sh uses.
func tool(t *testing.T, name string) string {
	t.Helper()
	if p, err := exec.LookPath(name); err == nil {
		return p
	}
	var dirs []string
	if out, err := exec.Command("go", "env", "GOPATH").Output(); err == nil {
		dirs = append(dirs, filepath.Join(strings.TrimSpace(string(out)), "bin"))
	}
	if d := os.Getenv("GHLPROXY_TOOLS"); d != "" {
		dirs = append(dirs, filepath.Join(d, "node_modules", ".bin"))
	}
	if home, err := os.UserHomeDir(); err == nil {
		dirs = append(dirs, filepath.Join(home, ".cache", "ghlproxy-tools", "node_modules", ".bin"))
	}
	for _, d := range dirs {
		if p := filepath.Join(d, name); isExec(p) {
			return p
		}
	}
	if os.Getenv("CI") == "true" {
		t.Fatalf("%s not found (PATH, %s): run scripts/k8s-tools.sh", name, strings.Join(dirs, ", "))
	}
	t.Skipf("%s not found: run scripts/k8s-tools.sh to install it", name)
	return ""
}

func isExec(p string) bool {
	st, err := os.Stat(p)
	return err == nil && !st.IsDir() && st.Mode()&0o111 != 0
}

// run runs a command and returns its stdout; a failure fails the test with stderr.
func run(t *testing.T, name string, args ...string) []byte {
	t.Helper()
	out, err := runErr(name, args...)
	if err != nil {
		t.Fatalf("%s %s: %v", filepath.Base(name), strings.Join(args, " "), err)
	}
	return out
}

func runErr(name string, args ...string) ([]byte, error) {
	var stdout, stderr bytes.Buffer
	cmd := exec.Command(name, args...)
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return stdout.Bytes(), fmt.Errorf("%w\n%s%s", err, stderr.Bytes(), stdout.Bytes())
	}
	return stdout.Bytes(), nil
}

// object is one rendered manifest, decoded strictly into its k8s.io/api type (or into
// unstructured for custom resources).
type object struct {
	Kind, APIVersion, Name, Namespace string
	JSON                              []byte
	Value                             any
}

// typed maps the built-in kinds the chart renders to their API types.
var typed = map[string]func() any{
	"apps/v1/Deployment":            func() any { return new(appsv1.Deployment) },
	"v1/Service":                    func() any { return new(corev1.Service) },
	"v1/ServiceAccount":             func() any { return new(corev1.ServiceAccount) },
	"v1/ConfigMap":                  func() any { return new(corev1.ConfigMap) },
	"v1/Secret":                     func() any { return new(corev1.Secret) },
	"networking.k8s.io/v1/Ingress":  func() any { return new(networkingv1.Ingress) },
	"policy/v1/PodDisruptionBudget": func() any { return new(policyv1.PodDisruptionBudget) },
	"admissionregistration.k8s.io/v1/MutatingWebhookConfiguration": func() any {
		return new(admissionregistrationv1.MutatingWebhookConfiguration)
	},
}

// custom lists the custom resources the chart may render, with the fields each must have.
var custom = map[string][][]string{
	"monitoring.coreos.com/v1/ServiceMonitor": {{"spec", "selector"}, {"spec", "endpoints"}},
	"monitoring.coreos.com/v1/PodMonitor":     {{"spec", "selector"}, {"spec", "podMetricsEndpoints"}},
	"monitoring.coreos.com/v1/PrometheusRule": {{"spec", "groups"}},
	"cert-manager.io/v1/Certificate":          {{"spec", "secretName"}, {"spec", "issuerRef", "name"}},
	"cert-manager.io/v1/Issuer":               {},
}

// render runs helm template with the values files and --set flags, and decodes the output.
func render(t *testing.T, args ...string) []object {
	t.Helper()
	helm := tool(t, "helm")
	out := run(t, helm, append([]string{"template", "rel", chartDir, "--namespace", "ghl", "--kube-version", kubeVersion}, args...)...)
	objs, err := decode(out)
	if err != nil {
		t.Fatalf("helm template %v: %v", args, err)
	}
	return objs
}

func decode(manifests []byte) ([]object, error) {
	var objs []object
	r := utilyaml.NewYAMLReader(bufio.NewReader(bytes.NewReader(manifests)))
	for {
		doc, err := r.Read()
		if errors.Is(err, io.EOF) {
			return objs, nil
		}
		if err != nil {
			return nil, err
		}
		js, err := yaml.YAMLToJSONStrict(doc)
		if err != nil {
			return nil, fmt.Errorf("%w\n%s", err, doc)
		}
		if string(js) == "null" {
			continue // only comments
		}
		var meta struct {
			APIVersion string `json:"apiVersion"`
			Kind       string `json:"kind"`
			Metadata   struct{ Name, Namespace string }
		}
		if err := json.Unmarshal(js, &meta); err != nil {
			return nil, err
		}
		o := object{Kind: meta.Kind, APIVersion: meta.APIVersion, Name: meta.Metadata.Name, Namespace: meta.Metadata.Namespace, JSON: js}
		gvk := meta.APIVersion + "/" + meta.Kind
		if newT, ok := typed[gvk]; ok {
			o.Value = newT()
			dec := json.NewDecoder(bytes.NewReader(js))
			dec.DisallowUnknownFields()
			if err := dec.Decode(o.Value); err != nil {
				return nil, fmt.Errorf("%s %s: %w", gvk, o.Name, err)
			}
		} else if fields, ok := custom[gvk]; ok {
			u := &unstructured.Unstructured{}
			if err := u.UnmarshalJSON(js); err != nil {
				return nil, fmt.Errorf("%s %s: %w", gvk, o.Name, err)
			}
			for _, f := range fields {
				if v, found, err := unstructured.NestedFieldNoCopy(u.Object, f...); !found || err != nil || v == nil {
					return nil, fmt.Errorf("%s %s: missing %s", gvk, o.Name, strings.Join(f, "."))
				}
			}
			o.Value = u
		} else {
			return nil, fmt.Errorf("unexpected kind %s (%s): add it to the test's types", gvk, o.Name)
		}
		if o.Name == "" {
			return nil, fmt.Errorf("%s without a name", gvk)
		}
		objs = append(objs, o)
	}
}

// find returns the rendered object of that kind and name, decoded as T.
func find[T any](t *testing.T, objs []object, kind, name string) *T {
	t.Helper()
	for _, o := range objs {
		if o.Kind == kind && o.Name == name {
			v, ok := o.Value.(*T)
			if !ok {
				t.Fatalf("%s %s decoded as %T", kind, name, o.Value)
			}
			return v
		}
	}
	t.Fatalf("no %s %q rendered; have %v", kind, name, names(objs))
	return nil
}

func has(objs []object, kind string) bool {
	for _, o := range objs {
		if o.Kind == kind {
			return true
		}
	}
	return false
}

func names(objs []object) []string {
	var out []string
	for _, o := range objs {
		out = append(out, o.Kind+"/"+o.Name)
	}
	return out
}
