package injector

import (
	"errors"
	"fmt"
	"net/url"
	"regexp"
	"strconv"
	"strings"

	corev1 "k8s.io/api/core/v1"
)

// Pod annotations the injector reads. Each overrides one part of the sidecar for that pod;
// a value it cannot use makes the webhook refuse the pod with a message naming the
// annotation, rather than start a sidecar that is not what the pod asked for.
const (
	// AnnotationImage replaces the sidecar's image.
	AnnotationImage = "ghlproxy.io/image"
	// AnnotationEnvVar names the app variable(s), comma-separated, set to the sidecar's URL.
	AnnotationEnvVar = "ghlproxy.io/env-var"
	// AnnotationContainers limits the app containers that get the variable (comma-separated
	// names); by default every container does.
	AnnotationContainers = "ghlproxy.io/containers"
	// AnnotationRedisURLSecret names a Secret in the pod's namespace holding the Redis URL
	// (it may carry a password); its key is AnnotationRedisURLSecretKey, else the key the
	// chart was configured with, else "redis-url".
	AnnotationRedisURLSecret    = "ghlproxy.io/redis-url-secret"
	AnnotationRedisURLSecretKey = "ghlproxy.io/redis-url-secret-key"
	// AnnotationRedisURL sets the Redis URL in plain text; prefer the Secret when the URL
	// has a password.
	AnnotationRedisURL = "ghlproxy.io/redis-url"
	// AnnotationRateLimitRate sets ratelimit.rate (tokens per ratelimit.per).
	AnnotationRateLimitRate = "ghlproxy.io/ratelimit-rate"
	// AnnotationLogLevel sets log.level: debug, info, warn or error.
	AnnotationLogLevel = "ghlproxy.io/log-level"
	// AnnotationUpstream sets upstream, the GHL base URL the sidecar calls.
	AnnotationUpstream = "ghlproxy.io/upstream"
	// AnnotationPort and AnnotationOpsPort move the sidecar's proxy and ops listeners, for
	// apps that already use 8080 or 9090.
	AnnotationPort    = "ghlproxy.io/port"
	AnnotationOpsPort = "ghlproxy.io/ops-port"

	// AnnotationStatus is written by the injector; StatusInjected marks an injected pod.
	AnnotationStatus = "ghlproxy.io/status"
	StatusInjected   = "injected"
)

const defaultRedisSecretKey = "redis-url"

var (
	envNameRE = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`)
	// A DNS-1123 subdomain, what Secret names must be.
	secretNameRE = regexp.MustCompile(`^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$`)
	secretKeyRE  = regexp.MustCompile(`^[-._a-zA-Z0-9]+$`)
)

// configure returns the sidecar for a pod with these annotations, the app variables to set,
// and the containers limited to (nil: all).
func (in *Injector) configure(ann map[string]string) (corev1.Container, []string, []string, error) {
	sc := *in.sidecar.DeepCopy()
	envVars := in.envVars
	var only []string
	var errs []error
	bad := func(key, format string, args ...any) {
		errs = append(errs, fmt.Errorf("annotation %s: %q %s", key, ann[key], fmt.Sprintf(format, args...)))
	}

	if v, ok := ann[AnnotationImage]; ok {
		if strings.TrimSpace(v) == "" || strings.ContainsAny(v, " \t\n") {
			bad(AnnotationImage, "is not an image reference")
		} else {
			sc.Image = v
		}
	}
	if v, ok := ann[AnnotationEnvVar]; ok {
		names, err := envVarNames(v)
		if err != nil {
			bad(AnnotationEnvVar, "%v", err)
		} else {
			envVars = names
		}
	}
	if v, ok := ann[AnnotationContainers]; ok {
		for n := range strings.SplitSeq(v, ",") {
			if n = strings.TrimSpace(n); n != "" {
				only = append(only, n)
			}
		}
		if len(only) == 0 {
			bad(AnnotationContainers, "names no container")
		}
	}
	_, hasSecret := ann[AnnotationRedisURLSecret]
	_, hasURL := ann[AnnotationRedisURL]
	switch {
	case hasSecret && hasURL:
		errs = append(errs, fmt.Errorf("annotations %s and %s: set one, not both", AnnotationRedisURLSecret, AnnotationRedisURL))
	case hasSecret:
		name := ann[AnnotationRedisURLSecret]
		key := ann[AnnotationRedisURLSecretKey]
		if key == "" {
			key = redisSecretKey(&sc)
		}
		switch {
		case !secretNameRE.MatchString(name) || len(name) > 253:
			bad(AnnotationRedisURLSecret, "is not a Secret name")
		case !secretKeyRE.MatchString(key):
			bad(AnnotationRedisURLSecretKey, "is not a Secret key")
		default:
			setEnv(&sc, corev1.EnvVar{Name: envRedisURL, ValueFrom: &corev1.EnvVarSource{
				SecretKeyRef: &corev1.SecretKeySelector{LocalObjectReference: corev1.LocalObjectReference{Name: name}, Key: key},
			}})
		}
	case hasURL:
		v := ann[AnnotationRedisURL]
		if u, err := url.Parse(v); err != nil || (u.Scheme != "redis" && u.Scheme != "rediss") || u.Host == "" {
			bad(AnnotationRedisURL, "is not a redis:// or rediss:// URL")
		} else {
			setEnv(&sc, corev1.EnvVar{Name: envRedisURL, Value: v})
		}
	}
	if v, ok := ann[AnnotationRateLimitRate]; ok {
		if f, err := strconv.ParseFloat(v, 64); err != nil || f <= 0 {
			bad(AnnotationRateLimitRate, "is not a positive number")
		} else {
			setEnv(&sc, corev1.EnvVar{Name: envRate, Value: v})
		}
	}
	if v, ok := ann[AnnotationLogLevel]; ok {
		switch v {
		case "debug", "info", "warn", "error":
			setEnv(&sc, corev1.EnvVar{Name: envLogLevel, Value: v})
		default:
			bad(AnnotationLogLevel, "is not one of debug, info, warn, error")
		}
	}
	if v, ok := ann[AnnotationUpstream]; ok {
		if u, err := url.Parse(v); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			bad(AnnotationUpstream, "is not an absolute http(s) URL")
		} else {
			setEnv(&sc, corev1.EnvVar{Name: envUpstream, Value: v})
		}
	}
	for _, p := range []struct{ key, port, env, host string }{
		{AnnotationPort, ProxyPortName, envListen, "127.0.0.1"},
		{AnnotationOpsPort, OpsPortName, envOpsListen, ""},
	} {
		v, ok := ann[p.key]
		if !ok {
			continue
		}
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > 65535 {
			bad(p.key, "is not a port number")
			continue
		}
		sc.Ports[portIndex(&sc, p.port)].ContainerPort = int32(n)
		setEnv(&sc, corev1.EnvVar{Name: p.env, Value: listenHost(&sc, p.env, p.host) + ":" + v})
	}
	if sc.Ports[portIndex(&sc, ProxyPortName)].ContainerPort == sc.Ports[portIndex(&sc, OpsPortName)].ContainerPort {
		errs = append(errs, fmt.Errorf("annotations %s and %s: the proxy and ops ports must differ", AnnotationPort, AnnotationOpsPort))
	}
	return sc, envVars, only, errors.Join(errs...)
}

// envVarNames splits a comma-separated list of environment variable names.
func envVarNames(s string) ([]string, error) {
	var names []string
	for n := range strings.SplitSeq(s, ",") {
		n = strings.TrimSpace(n)
		if !envNameRE.MatchString(n) {
			return nil, fmt.Errorf("%q is not an environment variable name", n)
		}
		names = append(names, n)
	}
	return names, nil
}

// redisSecretKey is the key of the Redis URL Secret the template already uses, so an
// annotation naming only another Secret keeps the key the chart was configured with.
func redisSecretKey(c *corev1.Container) string {
	for _, e := range c.Env {
		if e.Name == envRedisURL && e.ValueFrom != nil && e.ValueFrom.SecretKeyRef != nil {
			return e.ValueFrom.SecretKeyRef.Key
		}
	}
	return defaultRedisSecretKey
}

// listenHost keeps the host part of the template's listen address (the proxy listens on
// loopback only by default), falling back to def.
func listenHost(c *corev1.Container, env, def string) string {
	for _, e := range c.Env {
		if e.Name == env && e.Value != "" {
			if i := strings.LastIndex(e.Value, ":"); i >= 0 {
				return e.Value[:i]
			}
		}
	}
	return def
}
