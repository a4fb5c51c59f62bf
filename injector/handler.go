package injector

import (
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"mime"
	"net/http"

	admissionv1 "k8s.io/api/admission/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// MutatePath is where the API server posts AdmissionReviews (the chart's webhook
// clientConfig.service.path).
const MutatePath = "/mutate"

// maxReviewBytes bounds a request body: the API server's own limit on an object is 3 MiB,
// and an AdmissionReview carries the object once (twice for updates, which are not sent here).
const maxReviewBytes = 8 << 20

// Handler serves MutatePath, and /healthz for the injector's own probes.
func Handler(in *Injector, log *slog.Logger) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("POST "+MutatePath, func(w http.ResponseWriter, r *http.Request) { serveMutate(in, log, w, r) })
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) { io.WriteString(w, "ok\n") })
	return mux
}

func serveMutate(in *Injector, log *slog.Logger, w http.ResponseWriter, r *http.Request) {
	if mt, _, _ := mime.ParseMediaType(r.Header.Get("Content-Type")); mt != "application/json" {
		http.Error(w, "injector: want Content-Type application/json", http.StatusUnsupportedMediaType)
		return
	}
	var review admissionv1.AdmissionReview
	if err := json.NewDecoder(http.MaxBytesReader(w, r.Body, maxReviewBytes)).Decode(&review); err != nil {
		http.Error(w, "injector: decoding AdmissionReview: "+err.Error(), http.StatusBadRequest)
		return
	}
	if review.Request == nil {
		http.Error(w, "injector: AdmissionReview has no request", http.StatusBadRequest)
		return
	}
	uid := review.Request.UID
	out := admissionv1.AdmissionReview{
		TypeMeta: metav1.TypeMeta{APIVersion: admissionv1.SchemeGroupVersion.String(), Kind: "AdmissionReview"},
		Response: admit(in, log, review.Request),
	}
	out.Response.UID = uid
	w.Header().Set("Content-Type", "application/json")
	if err := json.NewEncoder(w).Encode(out); err != nil {
		log.Warn("injector: writing AdmissionReview", "err", err)
	}
}

var podResource = metav1.GroupVersionResource{Version: "v1", Resource: "pods"}

// admit decides on one request. Anything that is not a pod being created is allowed as it
// is: the webhook's rules should not send such requests, and refusing them would block
// the cluster for a misconfiguration of ours.
func admit(in *Injector, log *slog.Logger, req *admissionv1.AdmissionRequest) *admissionv1.AdmissionResponse {
	allow := &admissionv1.AdmissionResponse{Allowed: true}
	if req.Resource != podResource || req.SubResource != "" || req.Operation != admissionv1.Create {
		return allow
	}
	var pod corev1.Pod
	if err := json.Unmarshal(req.Object.Raw, &pod); err != nil {
		log.Warn("injector: decoding pod", "namespace", req.Namespace, "err", err)
		return deny(http.StatusBadRequest, "ghlproxy injector: decoding pod: "+err.Error())
	}
	name := pod.Name
	if name == "" {
		name = pod.GenerateName + "*"
	}
	res, err := in.Patch(&pod)
	if err != nil {
		log.Info("injector: refused pod", "namespace", req.Namespace, "pod", name, "err", err)
		return deny(http.StatusUnprocessableEntity, "ghlproxy injector: "+err.Error())
	}
	allow.Warnings = res.Warnings
	if len(res.Patch) == 0 {
		log.Debug("injector: pod already injected", "namespace", req.Namespace, "pod", name)
		return allow
	}
	patch, err := json.Marshal(res.Patch)
	if err != nil {
		// Only values of known types go in; this is a bug, and the pod is better off without
		// the sidecar than refused.
		log.Error("injector: encoding patch", "err", err)
		allow.Warnings = append(allow.Warnings, fmt.Sprintf("ghlproxy injector: not injected: %v", err))
		return allow
	}
	pt := admissionv1.PatchTypeJSONPatch
	allow.Patch, allow.PatchType = patch, &pt
	log.Info("injector: injected sidecar", "namespace", req.Namespace, "pod", name, "containers", res.Containers, "dry_run", req.DryRun != nil && *req.DryRun)
	return allow
}

func deny(code int32, msg string) *admissionv1.AdmissionResponse {
	return &admissionv1.AdmissionResponse{Result: &metav1.Status{Status: metav1.StatusFailure, Code: code, Message: msg, Reason: metav1.StatusReasonInvalid}}
}
