package injector_test

import (
	"bytes"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"testing"

	jsonpatch "github.com/evanphx/json-patch/v5"
	admissionv1 "k8s.io/api/admission/v1"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/ghlproxy/ghlproxy/injector"
)

// sidecar is the container the chart's "ghlproxy.sidecar" template renders with its
// default values (the chart tests check the rendered one loads with injector.LoadSidecar).
func sidecar() corev1.Container {
	probe := func(path string) *corev1.Probe {
		return &corev1.Probe{ProbeHandler: corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{Path: path, Port: intstr.FromString(injector.OpsPortName)}}}
	}
	return corev1.Container{
		Name:  "ghlproxy",
		Image: "ghcr.io/ghlproxy/ghlproxy:1.0.0",
		Args:  []string{"serve"},
		Ports: []corev1.ContainerPort{
			{Name: injector.ProxyPortName, ContainerPort: 8080, Protocol: corev1.ProtocolTCP},
			{Name: injector.OpsPortName, ContainerPort: 9090, Protocol: corev1.ProtocolTCP},
		},
		Env: []corev1.EnvVar{
			{Name: "GHLPROXY_LISTEN", Value: "127.0.0.1:8080"},
			{Name: "GHLPROXY_OPS_LISTEN", Value: ":9090"},
			{Name: "GHLPROXY_LOG_FORMAT", Value: "json"},
			{Name: "GHLPROXY_REDIS_URL", ValueFrom: &corev1.EnvVarSource{SecretKeyRef: &corev1.SecretKeySelector{
				LocalObjectReference: corev1.LocalObjectReference{Name: "ghlproxy-redis"}, Key: "url"}}},
		},
		StartupProbe:   probe("/readyz"),
		ReadinessProbe: probe("/readyz"),
		LivenessProbe:  probe("/healthz"),
	}
}

func newServer(t *testing.T, envVar string) *httptest.Server {
	t.Helper()
	in, err := injector.New(sidecar(), envVar)
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(injector.Handler(in, slog.New(slog.DiscardHandler)))
	t.Cleanup(srv.Close)
	return srv
}

// podFromTemplate is the pod the ReplicaSet controller creates from a Deployment: the
// template's metadata and spec, a generated name, and no namespace in the object itself.
func podFromTemplate(d *appsv1.Deployment) *corev1.Pod {
	return &corev1.Pod{
		TypeMeta:   metav1.TypeMeta{APIVersion: "v1", Kind: "Pod"},
		ObjectMeta: *d.Spec.Template.ObjectMeta.DeepCopy(),
		Spec:       *d.Spec.Template.Spec.DeepCopy(),
	}
}

func deployment(annotations map[string]string, containers ...corev1.Container) *appsv1.Deployment {
	labels := map[string]string{"app": "billing", "ghlproxy.io/inject": "true"}
	d := &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Name: "billing", Namespace: "shop"},
		Spec: appsv1.DeploymentSpec{
			Selector: &metav1.LabelSelector{MatchLabels: map[string]string{"app": "billing"}},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: labels, Annotations: annotations},
				Spec:       corev1.PodSpec{Containers: containers},
			},
		},
	}
	d.Spec.Template.GenerateName = "billing-5d8f7c9b4-"
	return d
}

// review posts an AdmissionReview for pod, as the API server does, and returns the response.
func review(t *testing.T, srv *httptest.Server, pod *corev1.Pod) *admissionv1.AdmissionResponse {
	t.Helper()
	raw, err := json.Marshal(pod)
	if err != nil {
		t.Fatal(err)
	}
	return post(t, srv, &admissionv1.AdmissionRequest{
		UID:       types.UID("705ab4f5-6393-11e8-b7cc-42010a800002"),
		Kind:      metav1.GroupVersionKind{Version: "v1", Kind: "Pod"},
		Resource:  metav1.GroupVersionResource{Version: "v1", Resource: "pods"},
		Namespace: "shop",
		Operation: admissionv1.Create,
		Object:    runtime.RawExtension{Raw: raw},
	})
}

func post(t *testing.T, srv *httptest.Server, req *admissionv1.AdmissionRequest) *admissionv1.AdmissionResponse {
	t.Helper()
	body, err := json.Marshal(admissionv1.AdmissionReview{
		TypeMeta: metav1.TypeMeta{APIVersion: "admission.k8s.io/v1", Kind: "AdmissionReview"},
		Request:  req,
	})
	if err != nil {
		t.Fatal(err)
	}
	resp, err := http.Post(srv.URL+injector.MutatePath, "application/json", bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(resp.Body)
		t.Fatalf("status %d: %s", resp.StatusCode, b)
	}
	var out admissionv1.AdmissionReview
	dec := json.NewDecoder(resp.Body)
	dec.DisallowUnknownFields()
	if err := dec.Decode(&out); err != nil {
		t.Fatal(err)
	}
	if out.APIVersion != "admission.k8s.io/v1" || out.Kind != "AdmissionReview" {
		t.Fatalf("response is %s %s, want admission.k8s.io/v1 AdmissionReview", out.APIVersion, out.Kind)
	}
	if out.Response == nil || out.Response.UID != req.UID {
		t.Fatalf("response %+v does not answer request %s", out.Response, req.UID)
	}
	return out.Response
}

// apply applies the response's JSONPatch to pod's JSON and decodes the result strictly, as
// the API server would store it.
func apply(t *testing.T, pod *corev1.Pod, resp *admissionv1.AdmissionResponse) *corev1.Pod {
	t.Helper()
	if !resp.Allowed {
		t.Fatalf("pod refused: %+v", resp.Result)
	}
	if resp.PatchType == nil || *resp.PatchType != admissionv1.PatchTypeJSONPatch {
		t.Fatalf("patch type %v, want JSONPatch", resp.PatchType)
	}
	patch, err := jsonpatch.DecodePatch(resp.Patch)
	if err != nil {
		t.Fatalf("decoding patch %s: %v", resp.Patch, err)
	}
	doc, err := json.Marshal(pod)
	if err != nil {
		t.Fatal(err)
	}
	patched, err := patch.Apply(doc)
	if err != nil {
		t.Fatalf("applying patch %s: %v", resp.Patch, err)
	}
	var out corev1.Pod
	dec := json.NewDecoder(bytes.NewReader(patched))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&out); err != nil {
		t.Fatalf("patched pod does not decode: %v\n%s", err, patched)
	}
	return &out
}

func env(c corev1.Container, name string) (corev1.EnvVar, int) {
	n := 0
	var found corev1.EnvVar
	for _, e := range c.Env {
		if e.Name == name {
			found = e
			n++
		}
	}
	return found, n
}

// checkSidecar asserts the pod's first init container is the native sidecar.
func checkSidecar(t *testing.T, pod *corev1.Pod) corev1.Container {
	t.Helper()
	if len(pod.Spec.InitContainers) == 0 || pod.Spec.InitContainers[0].Name != "ghlproxy" {
		t.Fatalf("first init container is not the sidecar: %+v", pod.Spec.InitContainers)
	}
	sc := pod.Spec.InitContainers[0]
	if sc.RestartPolicy == nil || *sc.RestartPolicy != corev1.ContainerRestartPolicyAlways {
		t.Errorf("sidecar restartPolicy = %v, want Always (native sidecar)", sc.RestartPolicy)
	}
	for _, c := range pod.Spec.Containers {
		if c.Name == "ghlproxy" {
			t.Errorf("sidecar also added as a regular container")
		}
	}
	if got := pod.Annotations[injector.AnnotationStatus]; got != injector.StatusInjected {
		t.Errorf("annotation %s = %q, want %q", injector.AnnotationStatus, got, injector.StatusInjected)
	}
	return sc
}

func TestDeploymentOneContainer(t *testing.T) {
	srv := newServer(t, "")
	d := deployment(nil, corev1.Container{Name: "app", Image: "billing:1"})
	pod := podFromTemplate(d)
	got := apply(t, pod, review(t, srv, pod))

	sc := checkSidecar(t, got)
	if len(got.Spec.InitContainers) != 1 {
		t.Errorf("init containers = %d, want 1", len(got.Spec.InitContainers))
	}
	if sc.Image != "ghcr.io/ghlproxy/ghlproxy:1.0.0" || !slices.Equal(sc.Args, []string{"serve"}) {
		t.Errorf("sidecar image %q args %v", sc.Image, sc.Args)
	}
	if sc.StartupProbe == nil || sc.StartupProbe.HTTPGet.Path != "/readyz" {
		t.Errorf("sidecar lost its startup probe: %+v", sc.StartupProbe)
	}
	e, n := env(got.Spec.Containers[0], "GHL_BASE_URL")
	if n != 1 || e.Value != "http://127.0.0.1:8080" {
		t.Errorf("app GHL_BASE_URL = %+v (%d entries), want http://127.0.0.1:8080", e, n)
	}
	if got.GenerateName != pod.GenerateName || got.Labels["app"] != "billing" {
		t.Errorf("metadata changed: %+v", got.ObjectMeta)
	}
}

func TestDeploymentSeveralContainersWithEnv(t *testing.T) {
	srv := newServer(t, "")
	d := deployment(map[string]string{"kept": "yes"},
		corev1.Container{Name: "web", Image: "web:1", Env: []corev1.EnvVar{{Name: "PORT", Value: "3000"}, {Name: "MODE", Value: "prod"}}},
		corev1.Container{Name: "worker", Image: "worker:1"},
		corev1.Container{Name: "cron", Image: "cron:1", Env: []corev1.EnvVar{{Name: "GHL_BASE_URL", Value: "https://services.leadconnectorhq.com"}}},
	)
	d.Spec.Template.Spec.InitContainers = []corev1.Container{{Name: "migrate", Image: "migrate:1"}}
	pod := podFromTemplate(d)
	resp := review(t, srv, pod)
	got := apply(t, pod, resp)

	checkSidecar(t, got)
	if len(got.Spec.InitContainers) != 2 || got.Spec.InitContainers[1].Name != "migrate" {
		t.Errorf("init containers %v, want ghlproxy then migrate", names(got.Spec.InitContainers))
	}
	web := got.Spec.Containers[0]
	if want := []string{"PORT", "MODE", "GHL_BASE_URL"}; !slices.Equal(envNames(web), want) {
		t.Errorf("web env %v, want %v (appended, existing kept in order)", envNames(web), want)
	}
	if e, _ := env(web, "PORT"); e.Value != "3000" {
		t.Errorf("web PORT clobbered: %+v", e)
	}
	if e, n := env(got.Spec.Containers[1], "GHL_BASE_URL"); n != 1 || e.Value != "http://127.0.0.1:8080" {
		t.Errorf("worker GHL_BASE_URL = %+v (%d)", e, n)
	}
	if e, n := env(got.Spec.Containers[2], "GHL_BASE_URL"); n != 1 || e.Value != "https://services.leadconnectorhq.com" {
		t.Errorf("cron's own GHL_BASE_URL overridden: %+v (%d)", e, n)
	}
	if len(resp.Warnings) != 1 || !strings.Contains(resp.Warnings[0], `"cron"`) {
		t.Errorf("warnings %q, want one about cron keeping its own variable", resp.Warnings)
	}
	if got.Annotations["kept"] != "yes" {
		t.Errorf("existing annotation lost: %v", got.Annotations)
	}
}

func TestInjectedPodLeftAlone(t *testing.T) {
	srv := newServer(t, "")
	pod := podFromTemplate(deployment(nil, corev1.Container{Name: "app", Image: "app:1"}))
	once := apply(t, pod, review(t, srv, pod))

	resp := review(t, srv, once)
	if !resp.Allowed || resp.Patch != nil || resp.PatchType != nil {
		t.Fatalf("second pass: allowed %v patch %s, want allowed with no patch", resp.Allowed, resp.Patch)
	}

	// A pod carrying a sidecar of that name some other way (the chart's template written by
	// hand) is left alone too, status annotation or not.
	manual := podFromTemplate(deployment(nil, corev1.Container{Name: "app", Image: "app:1"}))
	manual.Spec.InitContainers = []corev1.Container{sidecar()}
	if resp := review(t, srv, manual); !resp.Allowed || resp.Patch != nil {
		t.Fatalf("hand-written sidecar: allowed %v patch %s, want no patch", resp.Allowed, resp.Patch)
	}
}

func TestAnnotationOverrides(t *testing.T) {
	srv := newServer(t, "")
	pod := podFromTemplate(deployment(map[string]string{
		injector.AnnotationImage:             "registry.example/ghlproxy:2.0.0",
		injector.AnnotationEnvVar:            "GHL_API_URL, HIGHLEVEL_BASE_URL",
		injector.AnnotationContainers:        "api",
		injector.AnnotationRedisURLSecret:    "billing-redis",
		injector.AnnotationRateLimitRate:     "120",
		injector.AnnotationLogLevel:          "debug",
		injector.AnnotationPort:              "18080",
		injector.AnnotationUpstream:          "http://fakeghl.test:8080",
		injector.AnnotationRedisURLSecretKey: "",
	},
		corev1.Container{Name: "api", Image: "api:1", Ports: []corev1.ContainerPort{{ContainerPort: 8080}}},
		corev1.Container{Name: "metrics", Image: "exporter:1"},
	))
	got := apply(t, pod, review(t, srv, pod))
	sc := checkSidecar(t, got)

	if sc.Image != "registry.example/ghlproxy:2.0.0" {
		t.Errorf("image %q", sc.Image)
	}
	for name, want := range map[string]string{
		"GHLPROXY_RATELIMIT_RATE": "120",
		"GHLPROXY_LOG_LEVEL":      "debug",
		"GHLPROXY_LISTEN":         "127.0.0.1:18080",
		"GHLPROXY_UPSTREAM":       "http://fakeghl.test:8080",
		"GHLPROXY_LOG_FORMAT":     "json",
	} {
		if e, n := env(sc, name); n != 1 || e.Value != want {
			t.Errorf("sidecar %s = %+v (%d entries), want %q", name, e, n, want)
		}
	}
	if e, n := env(sc, "GHLPROXY_REDIS_URL"); n != 1 || e.ValueFrom == nil || e.ValueFrom.SecretKeyRef.Name != "billing-redis" || e.ValueFrom.SecretKeyRef.Key != "url" {
		t.Errorf("redis url %+v (%d entries), want Secret billing-redis key url (the chart's key)", e, n)
	}
	if sc.Ports[0].ContainerPort != 18080 {
		t.Errorf("proxy port %d, want 18080", sc.Ports[0].ContainerPort)
	}
	api := got.Spec.Containers[0]
	for _, name := range []string{"GHL_API_URL", "HIGHLEVEL_BASE_URL"} {
		if e, n := env(api, name); n != 1 || e.Value != "http://127.0.0.1:18080" {
			t.Errorf("api %s = %+v (%d)", name, e, n)
		}
	}
	if len(got.Spec.Containers[1].Env) != 0 {
		t.Errorf("container not named in %s got env %v", injector.AnnotationContainers, got.Spec.Containers[1].Env)
	}
}

func TestBadPodsRefused(t *testing.T) {
	srv := newServer(t, "")
	app := corev1.Container{Name: "app", Image: "app:1"}
	for _, tc := range []struct {
		name string
		ann  map[string]string
		c    corev1.Container
		want string
	}{
		{"rate", map[string]string{injector.AnnotationRateLimitRate: "fast"}, app, injector.AnnotationRateLimitRate},
		{"level", map[string]string{injector.AnnotationLogLevel: "loud"}, app, injector.AnnotationLogLevel},
		{"env var", map[string]string{injector.AnnotationEnvVar: "GHL-URL"}, app, injector.AnnotationEnvVar},
		{"secret", map[string]string{injector.AnnotationRedisURLSecret: "Bad_Name"}, app, injector.AnnotationRedisURLSecret},
		{"both redis", map[string]string{injector.AnnotationRedisURLSecret: "s", injector.AnnotationRedisURL: "redis://r:6379"}, app, injector.AnnotationRedisURL},
		{"redis scheme", map[string]string{injector.AnnotationRedisURL: "http://r:6379"}, app, injector.AnnotationRedisURL},
		{"port", map[string]string{injector.AnnotationPort: "80000"}, app, injector.AnnotationPort},
		{"same ports", map[string]string{injector.AnnotationPort: "9090"}, app, "must differ"},
		{"port clash", nil, corev1.Container{Name: "app", Image: "app:1", Ports: []corev1.ContainerPort{{ContainerPort: 9090, Protocol: corev1.ProtocolTCP}}}, injector.AnnotationOpsPort},
	} {
		t.Run(tc.name, func(t *testing.T) {
			pod := podFromTemplate(deployment(tc.ann, tc.c))
			resp := review(t, srv, pod)
			if resp.Allowed || resp.Patch != nil {
				t.Fatalf("allowed %v patch %s, want refused", resp.Allowed, resp.Patch)
			}
			if resp.Result == nil || !strings.Contains(resp.Result.Message, tc.want) {
				t.Fatalf("message %+v does not name %q", resp.Result, tc.want)
			}
		})
	}
}

func TestOtherRequestsAllowedUnchanged(t *testing.T) {
	srv := newServer(t, "")
	raw, _ := json.Marshal(podFromTemplate(deployment(nil, corev1.Container{Name: "app", Image: "app:1"})))
	for _, req := range []*admissionv1.AdmissionRequest{
		{UID: "1", Resource: metav1.GroupVersionResource{Version: "v1", Resource: "pods"}, Operation: admissionv1.Update, Object: runtime.RawExtension{Raw: raw}},
		{UID: "2", Resource: metav1.GroupVersionResource{Version: "v1", Resource: "pods"}, SubResource: "ephemeralcontainers", Operation: admissionv1.Create, Object: runtime.RawExtension{Raw: raw}},
		{UID: "3", Resource: metav1.GroupVersionResource{Group: "apps", Version: "v1", Resource: "deployments"}, Operation: admissionv1.Create, Object: runtime.RawExtension{Raw: []byte(`{}`)}},
	} {
		if resp := post(t, srv, req); !resp.Allowed || resp.Patch != nil {
			t.Errorf("request %s: allowed %v patch %s, want allowed unchanged", req.UID, resp.Allowed, resp.Patch)
		}
	}
}

func TestCustomEnvVar(t *testing.T) {
	srv := newServer(t, "HIGHLEVEL_URL")
	pod := podFromTemplate(deployment(nil, corev1.Container{Name: "app", Image: "app:1", Env: []corev1.EnvVar{{Name: "GHL_BASE_URL", Value: "x"}}}))
	got := apply(t, pod, review(t, srv, pod))
	if e, n := env(got.Spec.Containers[0], "HIGHLEVEL_URL"); n != 1 || e.Value != "http://127.0.0.1:8080" {
		t.Errorf("HIGHLEVEL_URL = %+v (%d)", e, n)
	}
	if e, _ := env(got.Spec.Containers[0], "GHL_BASE_URL"); e.Value != "x" {
		t.Errorf("GHL_BASE_URL changed to %q", e.Value)
	}
}

func TestMalformedRequests(t *testing.T) {
	srv := newServer(t, "")
	for _, tc := range []struct {
		method, ctype, body string
		want                int
	}{
		{"POST", "text/plain", `{}`, http.StatusUnsupportedMediaType},
		{"POST", "application/json", `{"request":`, http.StatusBadRequest},
		{"POST", "application/json", `{"kind":"AdmissionReview"}`, http.StatusBadRequest},
		{"GET", "", ``, http.StatusMethodNotAllowed},
	} {
		req, _ := http.NewRequest(tc.method, srv.URL+injector.MutatePath, strings.NewReader(tc.body))
		req.Header.Set("Content-Type", tc.ctype)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != tc.want {
			t.Errorf("%s %s %q: status %d, want %d", tc.method, tc.ctype, tc.body, resp.StatusCode, tc.want)
		}
	}
}

func TestNewRejectsIncompleteSidecar(t *testing.T) {
	sc := sidecar()
	sc.Ports = sc.Ports[:1]
	if _, err := injector.New(sc, ""); err == nil || !strings.Contains(err.Error(), injector.OpsPortName) {
		t.Errorf("New without the ops port: err %v", err)
	}
	if _, err := injector.New(sidecar(), "1BAD"); err == nil {
		t.Errorf("New with a bad env var name: no error")
	}
}

func names(cs []corev1.Container) []string {
	var out []string
	for _, c := range cs {
		out = append(out, c.Name)
	}
	return out
}

func envNames(c corev1.Container) []string {
	var out []string
	for _, e := range c.Env {
		out = append(out, e.Name)
	}
	return out
}
