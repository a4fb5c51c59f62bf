package charts

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	jsonpatch "github.com/evanphx/json-patch/v5"
	admissionv1 "k8s.io/api/admission/v1"
	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	policyv1 "k8s.io/api/policy/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime"
	"sigs.k8s.io/yaml"

	"github.com/ghlproxy/ghlproxy/injector"
	"github.com/ghlproxy/ghlproxy/webhook"
)

const (
	injectorName = "rel-ghlproxy-injector"
	injectorDNS  = injectorName + ".ghl.svc"
)

func valuesFiles(t *testing.T) []string {
	files, err := filepath.Glob(filepath.Join(chartDir, "ci", "*.yaml"))
	if err != nil || len(files) < 4 {
		t.Fatalf("ci values files: %v %v", files, err)
	}
	return files
}

func TestLintStrict(t *testing.T) {
	helm := tool(t, "helm")
	run(t, helm, "lint", "--strict", chartDir)
	for _, f := range valuesFiles(t) {
		t.Run(filepath.Base(f), func(t *testing.T) {
			out := run(t, helm, "lint", "--strict", chartDir, "--values", f)
			if !bytes.Contains(out, []byte("0 chart(s) failed")) {
				t.Fatalf("helm lint: %s", out)
			}
		})
	}
}

// Every values file renders, and every manifest decodes strictly into its API type.
func TestTemplateDecodesStrictly(t *testing.T) {
	for _, f := range valuesFiles(t) {
		t.Run(filepath.Base(f), func(t *testing.T) {
			if objs := render(t, "--values", f); len(objs) == 0 {
				t.Fatal("nothing rendered")
			}
		})
	}
}

func TestInjectorWithChartTLS(t *testing.T) {
	objs := render(t, "--values", filepath.Join(chartDir, "ci", "default-values.yaml"))
	wh := find[admissionregistrationv1.MutatingWebhookConfiguration](t, objs, "MutatingWebhookConfiguration", injectorName+"-ghl")
	if len(wh.Webhooks) != 1 {
		t.Fatalf("webhooks: %d", len(wh.Webhooks))
	}
	w := wh.Webhooks[0]
	if *w.FailurePolicy != admissionregistrationv1.Ignore || *w.SideEffects != admissionregistrationv1.SideEffectClassNone {
		t.Errorf("failurePolicy %v sideEffects %v, want Ignore None", *w.FailurePolicy, *w.SideEffects)
	}
	if !slices.Equal(w.AdmissionReviewVersions, []string{"v1"}) {
		t.Errorf("admissionReviewVersions %v", w.AdmissionReviewVersions)
	}
	if w.ObjectSelector.MatchLabels["ghlproxy.io/inject"] != "true" {
		t.Errorf("objectSelector %+v", w.ObjectSelector)
	}
	if r := w.Rules[0]; !slices.Equal(r.Resources, []string{"pods"}) || !slices.Equal(r.Operations, []admissionregistrationv1.OperationType{admissionregistrationv1.Create}) {
		t.Errorf("rules %+v", w.Rules)
	}
	svcRef := w.ClientConfig.Service
	if svcRef == nil || svcRef.Name != injectorName || svcRef.Namespace != "ghl" || *svcRef.Path != injector.MutatePath || *svcRef.Port != 443 {
		t.Fatalf("clientConfig.service %+v", svcRef)
	}

	dep := find[appsv1.Deployment](t, objs, "Deployment", injectorName)
	svc := find[corev1.Service](t, objs, "Service", injectorName)
	checkServiceReaches(t, svc, dep, 443)
	if *dep.Spec.Replicas != 2 {
		t.Errorf("replicas %d", *dep.Spec.Replicas)
	}
	find[policyv1.PodDisruptionBudget](t, objs, "PodDisruptionBudget", injectorName)

	// The chart's certificate verifies against the caBundle for the Service's name.
	secret := find[corev1.Secret](t, objs, "Secret", injectorName+"-tls")
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(w.ClientConfig.CABundle) {
		t.Fatalf("caBundle holds no PEM certificate: %q", w.ClientConfig.CABundle)
	}
	block, _ := pem.Decode(secret.Data["tls.crt"])
	if block == nil {
		t.Fatal("tls.crt holds no PEM certificate")
	}
	cert, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cert.Verify(x509.VerifyOptions{DNSName: injectorDNS, Roots: pool}); err != nil {
		t.Fatalf("serving certificate does not verify for %s: %v", injectorDNS, err)
	}

	// The rendered files, served by the real injector, inject the rendered sidecar.
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{GenerateName: "billing-", Labels: map[string]string{"ghlproxy.io/inject": "true"}},
		Spec:       corev1.PodSpec{Containers: []corev1.Container{{Name: "app", Image: "billing:1"}}},
	}
	got := injectThroughChart(t, objs, dep, secret, w.ClientConfig.CABundle, pod)
	sc := got.Spec.InitContainers[0]
	if sc.Name != "ghlproxy" || sc.Image != "ghcr.io/ghlproxy/ghlproxy:0.1.0" || *sc.RestartPolicy != corev1.ContainerRestartPolicyAlways {
		t.Errorf("injected sidecar %s %s %v", sc.Name, sc.Image, sc.RestartPolicy)
	}
	if sc.StartupProbe == nil || sc.StartupProbe.HTTPGet.Port.StrVal != injector.OpsPortName {
		t.Errorf("sidecar startup probe %+v", sc.StartupProbe)
	}
	if sc.SecurityContext == nil || *sc.SecurityContext.RunAsUser != 65532 || !*sc.SecurityContext.ReadOnlyRootFilesystem {
		t.Errorf("sidecar securityContext %+v", sc.SecurityContext)
	}
	if e := envOf(got.Spec.Containers[0], "GHL_BASE_URL"); e == nil || e.Value != "http://127.0.0.1:8080" {
		t.Errorf("app GHL_BASE_URL %+v", e)
	}
	if e := envOf(sc, "GHLPROXY_LISTEN"); e == nil || e.Value != "127.0.0.1:8080" {
		t.Errorf("sidecar GHLPROXY_LISTEN %+v", e)
	}
	// Item 9 of the write-safety issue: an admin token is always set (a mesh delivers
	// outside traffic from loopback), the one kept in the release's admin Secret.
	admin := find[corev1.Secret](t, objs, "Secret", "rel-ghlproxy-admin")
	if e := envOf(sc, "GHLPROXY_ADMIN_TOKEN"); e == nil || len(e.Value) < 32 || e.Value != string(admin.Data["admin-token"]) {
		t.Errorf("sidecar GHLPROXY_ADMIN_TOKEN %+v; want the generated token of Secret rel-ghlproxy-admin", e)
	}
	if e := envOf(sc, "GHLPROXY_REDIS_URL"); e != nil {
		t.Errorf("no Redis configured, yet the sidecar has %+v", e)
	}
}

// injectThroughChart starts the injector with the files the chart mounts (its TLS Secret and
// sidecar ConfigMap, at the paths the Deployment's args name) and posts pod to it over TLS
// checked against the webhook's caBundle, as the API server would.
func injectThroughChart(t *testing.T, objs []object, dep *appsv1.Deployment, secret *corev1.Secret, caBundle []byte, pod *corev1.Pod) *corev1.Pod {
	t.Helper()
	c := dep.Spec.Template.Spec.Containers[0]
	if c.Args[0] != "injector" {
		t.Fatalf("injector args %v", c.Args)
	}
	flags := map[string]string{}
	for _, a := range c.Args[1:] {
		k, v, _ := strings.Cut(strings.TrimPrefix(a, "--"), "=")
		flags[k] = v
	}
	// Map each mount of the Deployment to a temp dir holding the volume's files.
	root := t.TempDir()
	files := map[string]map[string][]byte{}
	for _, v := range dep.Spec.Template.Spec.Volumes {
		switch {
		case v.Secret != nil:
			s := find[corev1.Secret](t, objs, "Secret", v.Secret.SecretName)
			files[v.Name] = s.Data
		case v.ConfigMap != nil:
			cm := find[corev1.ConfigMap](t, objs, "ConfigMap", v.ConfigMap.Name)
			files[v.Name] = map[string][]byte{}
			for k, d := range cm.Data {
				files[v.Name][k] = []byte(d)
			}
		}
	}
	for _, m := range c.VolumeMounts {
		dir := filepath.Join(root, m.MountPath)
		os.MkdirAll(dir, 0o755)
		for name, data := range files[m.Name] {
			os.WriteFile(filepath.Join(dir, name), data, 0o600)
		}
	}
	cfg := injector.Config{
		CertFile:    filepath.Join(root, flags["tls-cert"]),
		KeyFile:     filepath.Join(root, flags["tls-key"]),
		SidecarFile: filepath.Join(root, flags["sidecar"]),
		EnvVar:      flags["env-var"],
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- injector.Serve(ctx, ln, cfg, slog.New(slog.DiscardHandler)) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("injector: %v", err)
		}
	})

	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(caBundle)
	client := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool, ServerName: injectorDNS}}}
	raw, _ := json.Marshal(pod)
	body, _ := json.Marshal(admissionv1.AdmissionReview{
		TypeMeta: metav1.TypeMeta{APIVersion: "admission.k8s.io/v1", Kind: "AdmissionReview"},
		Request: &admissionv1.AdmissionRequest{UID: "u1", Namespace: "shop", Operation: admissionv1.Create,
			Resource: metav1.GroupVersionResource{Version: "v1", Resource: "pods"}, Object: runtime.RawExtension{Raw: raw}},
	})
	resp, err := client.Post("https://"+ln.Addr().String()+injector.MutatePath, "application/json", bytes.NewReader(body))
	if err != nil {
		t.Fatalf("calling the injector as the API server would: %v", err)
	}
	defer resp.Body.Close()
	var review admissionv1.AdmissionReview
	if err := json.NewDecoder(resp.Body).Decode(&review); err != nil {
		t.Fatal(err)
	}
	if review.Response == nil || !review.Response.Allowed || review.Response.UID != "u1" {
		t.Fatalf("response %+v", review.Response)
	}
	patch, err := jsonpatch.DecodePatch(review.Response.Patch)
	if err != nil {
		t.Fatal(err)
	}
	patched, err := patch.Apply(raw)
	if err != nil {
		t.Fatal(err)
	}
	var out corev1.Pod
	dec := json.NewDecoder(bytes.NewReader(patched))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&out); err != nil {
		t.Fatal(err)
	}
	return &out
}

func TestInjectorWithCertManager(t *testing.T) {
	objs := render(t, "--values", filepath.Join(chartDir, "ci", "cert-manager-values.yaml"))
	wh := find[admissionregistrationv1.MutatingWebhookConfiguration](t, objs, "MutatingWebhookConfiguration", injectorName+"-ghl")
	w := wh.Webhooks[0]
	if len(w.ClientConfig.CABundle) != 0 {
		t.Errorf("caBundle set by the chart; cainjector owns it")
	}
	if *w.FailurePolicy != admissionregistrationv1.Fail {
		t.Errorf("failurePolicy %v, want the values' Fail", *w.FailurePolicy)
	}
	ref := wh.Annotations["cert-manager.io/inject-ca-from"]
	ns, name, _ := strings.Cut(ref, "/")
	if ns != "ghl" {
		t.Fatalf("inject-ca-from %q", ref)
	}
	for _, o := range objs {
		if o.Kind == "Secret" && o.Name != "rel-ghlproxy-admin" {
			t.Errorf("chart renders Secret %s; cert-manager makes the TLS ones", o.Name)
		}
	}
	crt := find[unstructured.Unstructured](t, objs, "Certificate", name)
	dep := find[appsv1.Deployment](t, objs, "Deployment", injectorName)
	secretName, _, _ := unstructured.NestedString(crt.Object, "spec", "secretName")
	vi := slices.IndexFunc(dep.Spec.Template.Spec.Volumes, func(v corev1.Volume) bool { return v.Secret != nil })
	if vi < 0 || dep.Spec.Template.Spec.Volumes[vi].Secret.SecretName != secretName {
		t.Errorf("Deployment mounts %+v, Certificate writes %s", dep.Spec.Template.Spec.Volumes, secretName)
	}
	dns, _, _ := unstructured.NestedStringSlice(crt.Object, "spec", "dnsNames")
	if !slices.Contains(dns, injectorDNS) {
		t.Errorf("dnsNames %v lack %s", dns, injectorDNS)
	}
	// The issuer chain: serving Certificate <- CA Issuer <- CA Certificate <- self-signed Issuer.
	issuer, _, _ := unstructured.NestedString(crt.Object, "spec", "issuerRef", "name")
	caIssuer := find[unstructured.Unstructured](t, objs, "Issuer", issuer)
	caSecret, _, _ := unstructured.NestedString(caIssuer.Object, "spec", "ca", "secretName")
	var caCert *unstructured.Unstructured
	for _, o := range objs {
		if u, ok := o.Value.(*unstructured.Unstructured); ok && o.Kind == "Certificate" {
			if s, _, _ := unstructured.NestedString(u.Object, "spec", "secretName"); s == caSecret {
				caCert = u
			}
		}
	}
	if caCert == nil {
		t.Fatalf("no Certificate writes the CA Secret %q", caSecret)
	}
	if isCA, _, _ := unstructured.NestedBool(caCert.Object, "spec", "isCA"); !isCA {
		t.Errorf("CA Certificate is not isCA")
	}
	root, _, _ := unstructured.NestedString(caCert.Object, "spec", "issuerRef", "name")
	if _, found, _ := unstructured.NestedMap(find[unstructured.Unstructured](t, objs, "Issuer", root).Object, "spec", "selfSigned"); !found {
		t.Errorf("CA issuer %s is not self-signed", root)
	}

	// Values reach the sidecar the injector adds.
	sc := sidecarOf(t, objs)
	if e := envOf(sc, "GHLPROXY_REDIS_URL"); e == nil || e.ValueFrom.SecretKeyRef.Name != "ghlproxy-redis" || e.ValueFrom.SecretKeyRef.Key != "url" {
		t.Errorf("redis env %+v", e)
	}
	if e := envOf(sc, "GHLPROXY_IDENTITY_SECRET"); e == nil || e.ValueFrom.SecretKeyRef.Name != "ghlproxy-identity" {
		t.Errorf("identity env %+v", e)
	}
	for k, v := range map[string]string{"GHLPROXY_RATELIMIT_RATE": "200", "GHLPROXY_RATELIMIT_PER": "1m", "GHLPROXY_RATELIMIT_BURST": "20", "GHLPROXY_RATELIMIT_MAX_WAIT": "10s", "GHLPROXY_DEDUPE_WINDOW": "10s"} {
		if e := envOf(sc, k); e == nil || e.Value != v {
			t.Errorf("sidecar %s = %+v, want %s", k, e, v)
		}
	}
	// proxy.gomaxprocs "auto" (the default): from the container's CPU request, rounded up.
	if e := envOf(sc, "GOMAXPROCS"); e == nil || e.ValueFrom == nil || e.ValueFrom.ResourceFieldRef == nil ||
		e.ValueFrom.ResourceFieldRef.Resource != "requests.cpu" || e.ValueFrom.ResourceFieldRef.Divisor.String() != "1" {
		t.Errorf("sidecar GOMAXPROCS = %+v, want the CPU request with divisor 1", e)
	}
	if !slices.Contains(dep.Spec.Template.Spec.Containers[0].Args, "--env-var=GHL_BASE_URL,HIGHLEVEL_API_URL") {
		t.Errorf("injector args %v", dep.Spec.Template.Spec.Containers[0].Args)
	}
}

// TestGomaxprocs: a number is written as is, and "" leaves GOMAXPROCS to Go.
func TestGomaxprocs(t *testing.T) {
	for set, want := range map[string]string{"proxy.gomaxprocs=2": "2", `proxy.gomaxprocs=`: ""} {
		objs := render(t, "--values", filepath.Join(chartDir, "ci", "standalone-values.yaml"), "--set", set)
		c := find[appsv1.Deployment](t, objs, "Deployment", "rel-ghlproxy").Spec.Template.Spec.Containers[0]
		e := envOf(c, "GOMAXPROCS")
		switch {
		case want == "" && e != nil:
			t.Errorf("--set %s: GOMAXPROCS = %+v, want none", set, e)
		case want != "" && (e == nil || e.Value != want):
			t.Errorf("--set %s: GOMAXPROCS = %+v, want %s", set, e, want)
		}
	}
}

func TestStandalone(t *testing.T) {
	objs := render(t, "--values", filepath.Join(chartDir, "ci", "standalone-values.yaml"))
	if has(objs, "MutatingWebhookConfiguration") || has(objs, "ServiceAccount") {
		t.Errorf("injector rendered with injector.enabled=false: %v", names(objs))
	}
	dep := find[appsv1.Deployment](t, objs, "Deployment", "rel-ghlproxy")
	svc := find[corev1.Service](t, objs, "Service", "rel-ghlproxy")
	checkServiceReaches(t, svc, dep, 8080)
	checkServiceReaches(t, svc, dep, 9090)
	c := dep.Spec.Template.Spec.Containers[0]
	if *dep.Spec.Replicas != 3 || c.Image != "ghcr.io/ghlproxy/ghlproxy:1.2.3" || !slices.Equal(c.Args, []string{"serve"}) {
		t.Errorf("replicas %d image %s args %v", *dep.Spec.Replicas, c.Image, c.Args)
	}
	if e := envOf(c, "GHLPROXY_LISTEN"); e == nil || e.Value != ":8080" {
		t.Errorf("standalone listens on %+v, want all interfaces", e)
	}
	if e := envOf(c, "GHLPROXY_REDIS_URL"); e == nil || e.ValueFrom.SecretKeyRef.Name != "redis-credentials" || e.ValueFrom.SecretKeyRef.Key != "url" {
		t.Errorf("redis env %+v", e)
	}
	admin := find[corev1.Secret](t, objs, "Secret", "rel-ghlproxy-admin")
	if len(admin.Data["admin-token"]) < 32 {
		t.Errorf("generated admin token %q", admin.Data["admin-token"])
	}
	if e := envOf(c, "GHLPROXY_ADMIN_TOKEN"); e == nil || e.ValueFrom == nil || e.ValueFrom.SecretKeyRef.Name != "rel-ghlproxy-admin" || e.ValueFrom.SecretKeyRef.Key != "admin-token" {
		t.Errorf("standalone admin token env %+v; want it from the admin Secret", e)
	}
	for k, v := range map[string]string{"GHLPROXY_LOG_LEVEL": "debug", "GHLPROXY_UPSTREAM": "http://fakeghl.test:8081", "GHLPROXY_OPS_LISTEN": ":9090"} {
		if e := envOf(c, k); e == nil || e.Value != v {
			t.Errorf("%s = %+v, want %s", k, e, v)
		}
	}
}

func TestMonitoring(t *testing.T) {
	objs := render(t, "--values", filepath.Join(chartDir, "ci", "monitoring-values.yaml"))
	svc := find[corev1.Service](t, objs, "Service", "rel-ghlproxy")

	sm := find[unstructured.Unstructured](t, objs, "ServiceMonitor", "rel-ghlproxy")
	sel, _, _ := unstructured.NestedStringMap(sm.Object, "spec", "selector", "matchLabels")
	if !labels.SelectorFromSet(sel).Matches(labels.Set(svc.Labels)) {
		t.Errorf("ServiceMonitor selector %v does not match the Service's labels %v", sel, svc.Labels)
	}
	eps, _, _ := unstructured.NestedSlice(sm.Object, "spec", "endpoints")
	port := eps[0].(map[string]any)["port"]
	if !slices.ContainsFunc(svc.Spec.Ports, func(p corev1.ServicePort) bool { return p.Name == port }) {
		t.Errorf("ServiceMonitor port %v is not a Service port", port)
	}

	pm := find[unstructured.Unstructured](t, objs, "PodMonitor", "rel-ghlproxy-sidecars")
	pmSel, _, _ := unstructured.NestedStringMap(pm.Object, "spec", "selector", "matchLabels")
	if pmSel["ghlproxy.io/inject"] != "true" {
		t.Errorf("PodMonitor selector %v", pmSel)
	}
	pes, _, _ := unstructured.NestedSlice(pm.Object, "spec", "podMetricsEndpoints")
	if p := pes[0].(map[string]any)["port"]; p != injector.OpsPortName || !slices.ContainsFunc(sidecarOf(t, objs).Ports, func(cp corev1.ContainerPort) bool { return cp.Name == p }) {
		t.Errorf("PodMonitor port %v is not the sidecar's ops port", p)
	}

	// A Redis URL given as a value goes into a Secret for standalone mode.
	s := find[corev1.Secret](t, objs, "Secret", "rel-ghlproxy-redis")
	if s.StringData["redis-url"] != "redis://:s3cret@redis-master.data.svc:6379/0" {
		t.Errorf("redis Secret %v", s.StringData)
	}
	c := find[appsv1.Deployment](t, objs, "Deployment", "rel-ghlproxy").Spec.Template.Spec.Containers[0]
	if e := envOf(c, "GHLPROXY_REDIS_URL"); e == nil || e.ValueFrom == nil || e.ValueFrom.SecretKeyRef.Name != "rel-ghlproxy-redis" {
		t.Errorf("standalone redis env %+v", e)
	}

	cm := find[corev1.ConfigMap](t, objs, "ConfigMap", "rel-ghlproxy-dashboard")
	if cm.Labels["grafana_dashboard"] != "1" || cm.Annotations["grafana_folder"] != "ghlproxy" {
		t.Errorf("dashboard ConfigMap labels %v annotations %v", cm.Labels, cm.Annotations)
	}
	file, err := os.ReadFile(filepath.Join(chartDir, "dashboards", "ghlproxy.json"))
	if err != nil {
		t.Fatal(err)
	}
	if cm.Data["ghlproxy.json"] != strings.TrimRight(string(file), "\n") {
		t.Errorf("the ConfigMap's dashboard differs from dashboards/ghlproxy.json")
	}

	rules := ruleFile(t, objs)
	run(t, tool(t, "promtool"), "check", "rules", rules)
}

// ruleFile writes the rendered PrometheusRule's groups as a Prometheus rule file, without
// the rule fields named in drop.
func ruleFile(t *testing.T, objs []object, drop ...string) string {
	t.Helper()
	pr := find[unstructured.Unstructured](t, objs, "PrometheusRule", "rel-ghlproxy")
	spec, _, _ := unstructured.NestedMap(pr.Object, "spec")
	for _, g := range spec["groups"].([]any) {
		for _, r := range g.(map[string]any)["rules"].([]any) {
			for _, f := range drop {
				delete(r.(map[string]any), f)
			}
		}
	}
	b, err := yaml.Marshal(spec)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "rules.yaml")
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

func TestSchemaRejectsBadValues(t *testing.T) {
	helm := tool(t, "helm")
	for _, tc := range []struct{ set, want string }{
		{"injector.failurePolicy=Sometimes", "failurePolicy"},
		{"redis.url=http://redis:6379", "url"},
		{"proxy.logLevel=loud", "logLevel"},
		{"proxy.gomaxprocs=many", "gomaxprocs"},
		{"proxy.gomaxprocs=0", "gomaxprocs"},
		{"sidecar.envVar=GHL-URL", "envVar"},
		{"redis.url=redis://r:6379,redis.existingSecret=s", "not both"},
		{"webhooks.port=70000", "port"},
		{"webhooks.forwardUrl=ftp://app/hooks", "forwardUrl"},
		{"webhooks.maxAge=soon", "maxAge"},
		{"webhooks.ingress.enabled=true", "standalone.enabled and webhooks.port"},
	} {
		out, err := runErr(helm, "template", "rel", chartDir, "--kube-version", kubeVersion, "--set", tc.set)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("--set %s: err %v, want one naming %s\n%.300s", tc.set, err, tc.want, out)
		}
	}
}

// TestWebhooks is item 4 of the webhook issue: webhooks.port is a container port of the
// sidecar and of standalone mode, a port of the standalone Service, and the backend of an
// optional Ingress of the receiver's path alone; none of it by default.
func TestWebhooks(t *testing.T) {
	objs := render(t)
	sc := sidecarOf(t, objs)
	if slices.ContainsFunc(sc.Ports, func(p corev1.ContainerPort) bool { return p.Name == "ghlproxy-webhooks" }) ||
		envOf(sc, "GHLPROXY_WEBHOOKS_LISTEN") != nil || has(objs, "Ingress") {
		t.Errorf("webhook listener or Ingress rendered by default: ports %v", sc.Ports)
	}

	sc = sidecarOf(t, render(t, "--set", "webhooks.port=8088", "--set", "webhooks.publicKey=abcd"))
	if !slices.ContainsFunc(sc.Ports, func(p corev1.ContainerPort) bool { return p.Name == "ghlproxy-webhooks" && p.ContainerPort == 8088 }) {
		t.Errorf("sidecar ports %v lack ghlproxy-webhooks 8088", sc.Ports)
	}
	for k, v := range map[string]string{"GHLPROXY_WEBHOOKS_LISTEN": ":8088", "GHLPROXY_WEBHOOKS_PUBLIC_KEY": "abcd"} {
		if e := envOf(sc, k); e == nil || e.Value != v {
			t.Errorf("sidecar %s = %+v, want %s", k, e, v)
		}
	}

	objs = render(t, "--values", filepath.Join(chartDir, "ci", "webhooks-values.yaml"))
	dep := find[appsv1.Deployment](t, objs, "Deployment", "rel-ghlproxy")
	svc := find[corev1.Service](t, objs, "Service", "rel-ghlproxy")
	checkServiceReaches(t, svc, dep, 8088)
	c := dep.Spec.Template.Spec.Containers[0]
	for k, v := range map[string]string{"GHLPROXY_WEBHOOKS_LISTEN": ":8088", "GHLPROXY_WEBHOOKS_FORWARD_URL": "http://app.shop.svc:3000/ghl/webhooks",
		"GHLPROXY_WEBHOOKS_MAX_AGE": "2m"} {
		if e := envOf(c, k); e == nil || e.Value != v {
			t.Errorf("standalone %s = %+v, want %s", k, e, v)
		}
	}
	ing := find[networkingv1.Ingress](t, objs, "Ingress", "rel-ghlproxy-webhooks")
	if ing.Spec.IngressClassName == nil || *ing.Spec.IngressClassName != "nginx" || len(ing.Spec.TLS) != 1 || len(ing.Spec.Rules) != 1 {
		t.Fatalf("Ingress spec %+v", ing.Spec)
	}
	rule := ing.Spec.Rules[0]
	if rule.Host != "hooks.example.com" || rule.HTTP == nil || len(rule.HTTP.Paths) != 1 {
		t.Fatalf("Ingress rule %+v", rule)
	}
	p := rule.HTTP.Paths[0]
	if p.Path != webhook.Path || p.PathType == nil || *p.PathType != networkingv1.PathTypeExact ||
		p.Backend.Service == nil || p.Backend.Service.Name != svc.Name || p.Backend.Service.Port.Name != "ghlproxy-webhooks" {
		t.Errorf("Ingress path %+v, want exactly %s to the Service's ghlproxy-webhooks port", p, webhook.Path)
	}
}

// A user's own chart includes ghlproxy.sidecar in a pod spec, without the webhook.
func TestSidecarTemplateInOwnChart(t *testing.T) {
	dir := t.TempDir()
	app := filepath.Join(dir, "app")
	copyDir(t, chartDir, filepath.Join(app, "charts", "ghlproxy"))
	write := func(name, s string) {
		os.MkdirAll(filepath.Dir(filepath.Join(app, name)), 0o755)
		if err := os.WriteFile(filepath.Join(app, name), []byte(s), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write("Chart.yaml", "apiVersion: v2\nname: app\nversion: 1.0.0\nkubeVersion: \">=1.29.0-0\"\ndependencies:\n  - name: ghlproxy\n    version: 0.1.0\n")
	write("values.yaml", "ghlproxy:\n  injector:\n    enabled: false\n  image:\n    tag: 2.0.0\n  redis:\n    existingSecret: app-redis\n")
	write("templates/deployment.yaml", `apiVersion: apps/v1
kind: Deployment
metadata:
  name: app
spec:
  selector:
    matchLabels: {app: app}
  template:
    metadata:
      labels: {app: app}
    spec:
      initContainers:
        {{- include "ghlproxy.sidecar" (dict "Values" .Values.ghlproxy) | nindent 8 }}
      containers:
        - name: app
          image: app:1
          env:
            - name: GHL_BASE_URL
              value: http://127.0.0.1:8080
`)
	helm := tool(t, "helm")
	run(t, helm, "lint", "--strict", app)
	out := run(t, helm, "template", "rel", app, "--kube-version", kubeVersion)
	objs, err := decode(out)
	if err != nil {
		t.Fatal(err)
	}
	if has(objs, "MutatingWebhookConfiguration") {
		t.Errorf("webhook rendered with ghlproxy.injector.enabled=false")
	}
	dep := find[appsv1.Deployment](t, objs, "Deployment", "app")
	sc := dep.Spec.Template.Spec.InitContainers[0]
	if sc.Name != "ghlproxy" || sc.Image != "ghcr.io/ghlproxy/ghlproxy:2.0.0" || sc.RestartPolicy == nil || *sc.RestartPolicy != corev1.ContainerRestartPolicyAlways {
		t.Errorf("sidecar %s %s %v", sc.Name, sc.Image, sc.RestartPolicy)
	}
	if e := envOf(sc, "GHLPROXY_REDIS_URL"); e == nil || e.ValueFrom.SecretKeyRef.Name != "app-redis" || e.ValueFrom.SecretKeyRef.Key != "redis-url" {
		t.Errorf("redis env %+v (subchart default key expected)", e)
	}
	if e := envOf(sc, "GHLPROXY_ADMIN_TOKEN"); e == nil || len(e.Value) < 32 {
		t.Errorf("sidecar included by hand has admin token %+v; want a generated one", e)
	}
	// The injector leaves such a pod alone.
	in, err := injector.New(sc, "")
	if err != nil {
		t.Fatal(err)
	}
	res, err := in.Patch(&corev1.Pod{ObjectMeta: dep.Spec.Template.ObjectMeta, Spec: dep.Spec.Template.Spec})
	if err != nil || len(res.Patch) != 0 {
		t.Errorf("injector patched a pod carrying the template's sidecar: %v %v", res.Patch, err)
	}
}

func copyDir(t *testing.T, src, dst string) {
	t.Helper()
	err := filepath.WalkDir(src, func(p string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(src, p)
		if d.IsDir() {
			return os.MkdirAll(filepath.Join(dst, rel), 0o755)
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		return os.WriteFile(filepath.Join(dst, rel), b, 0o600)
	})
	if err != nil {
		t.Fatal(err)
	}
}

// sidecarOf is the sidecar container in the injector's ConfigMap, loaded as the injector does.
func sidecarOf(t *testing.T, objs []object) corev1.Container {
	t.Helper()
	cm := find[corev1.ConfigMap](t, objs, "ConfigMap", injectorName)
	path := filepath.Join(t.TempDir(), "sidecar.json")
	os.WriteFile(path, []byte(cm.Data["sidecar.json"]), 0o600)
	sc, err := injector.LoadSidecar(path)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := injector.New(sc, ""); err != nil {
		t.Fatal(err)
	}
	return sc
}

// checkServiceReaches asserts svc selects dep's pods and its port forwards to a named
// container port.
func checkServiceReaches(t *testing.T, svc *corev1.Service, dep *appsv1.Deployment, port int32) {
	t.Helper()
	podLabels := labels.Set(dep.Spec.Template.Labels)
	if !labels.SelectorFromSet(svc.Spec.Selector).Matches(podLabels) {
		t.Errorf("Service %s selector %v does not match pods %v", svc.Name, svc.Spec.Selector, podLabels)
	}
	sel, err := metav1.LabelSelectorAsSelector(dep.Spec.Selector)
	if err != nil || !sel.Matches(podLabels) {
		t.Errorf("Deployment %s selector %v does not match its pods %v", dep.Name, dep.Spec.Selector, podLabels)
	}
	i := slices.IndexFunc(svc.Spec.Ports, func(p corev1.ServicePort) bool { return p.Port == port })
	if i < 0 {
		t.Fatalf("Service %s has no port %d", svc.Name, port)
	}
	target := svc.Spec.Ports[i].TargetPort.StrVal
	if !slices.ContainsFunc(dep.Spec.Template.Spec.Containers[0].Ports, func(p corev1.ContainerPort) bool { return p.Name == target }) {
		t.Errorf("Service %s port %d targets %q, not a container port name", svc.Name, port, target)
	}
}

func envOf(c corev1.Container, name string) *corev1.EnvVar {
	for i := range c.Env {
		if c.Env[i].Name == name {
			return &c.Env[i]
		}
	}
	return nil
}
