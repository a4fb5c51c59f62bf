package config

import (
	"bytes"
	"net/url"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"
)

// Redaction replaces secrets in printed configuration.
const Redaction = "<redacted>"

// Redacted returns a deep copy of c with every secret (fields tagged secret:"true":
// redis.password, admin.token, identity.secret; and the password inside redis.url)
// replaced by "<redacted>". Empty secrets stay empty, so the output still shows which are
// unset.
func (c *Config) Redacted() *Config {
	r := *c
	r.Redis.Addrs = slices.Clone(c.Redis.Addrs)
	r.Dedupe.Methods = slices.Clone(c.Dedupe.Methods)
	r.Dedupe.Routes = slices.Clone(c.Dedupe.Routes)
	r.Cache.Routes = slices.Clone(c.Cache.Routes)
	r.Warm.Targets = slices.Clone(c.Warm.Targets)
	for i := range r.Warm.Targets {
		r.Warm.Targets[i].Requests = slices.Clone(r.Warm.Targets[i].Requests)
	}
	root := reflect.ValueOf(&r).Elem()
	for _, k := range keys() {
		if k.field.Tag.Get("secret") == "true" {
			if f := root.FieldByIndex(k.index); f.String() != "" {
				f.SetString(Redaction)
			}
		}
	}
	r.Redis.URL = redactURL(r.Redis.URL)
	return &r
}

// redactURL hides the password of a redis URL; a URL that does not parse is hidden whole,
// since it may hold a password we cannot find.
func redactURL(s string) string {
	if s == "" || strings.Contains(s, ":"+Redaction+"@") {
		return s // already redacted: Redacted().YAML() redacts twice
	}
	u, err := url.Parse(s)
	if err != nil {
		return Redaction
	}
	if _, ok := u.User.Password(); !ok {
		return s
	}
	// url.URL.Redacted writes "xxxxx"; say it the same way as every other secret.
	return strings.Replace(u.Redacted(), ":xxxxx@", ":"+Redaction+"@", 1)
}

// YAML is the effective configuration with secrets redacted, in the file format Load reads
// (what `ghlproxy config` prints). Keys come in declaration order.
func (c *Config) YAML() ([]byte, error) {
	var buf bytes.Buffer
	enc := yaml.NewEncoder(&buf)
	enc.SetIndent(2)
	if err := enc.Encode(node(reflect.ValueOf(c.Redacted()).Elem())); err != nil {
		return nil, err
	}
	if err := enc.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// node renders a configuration value as YAML, durations and sizes in their readable form.
func node(v reflect.Value) *yaml.Node {
	str := func(s string) *yaml.Node { return &yaml.Node{Kind: yaml.ScalarNode, Tag: "!!str", Value: s} }
	switch v.Type() {
	case durationType:
		return str(formatDuration(time.Duration(v.Int())))
	case byteSizeType:
		return str(ByteSize(v.Int()).String())
	}
	switch v.Kind() {
	case reflect.Struct:
		n := &yaml.Node{Kind: yaml.MappingNode}
		for i := range v.NumField() {
			n.Content = append(n.Content, str(tagName(v.Type().Field(i))), node(v.Field(i)))
		}
		return n
	case reflect.Slice:
		n := &yaml.Node{Kind: yaml.SequenceNode}
		if v.Type().Elem().Kind() != reflect.Struct {
			n.Style = yaml.FlowStyle
		}
		for i := range v.Len() {
			n.Content = append(n.Content, node(v.Index(i)))
		}
		return n
	case reflect.Int:
		return &yaml.Node{Kind: yaml.ScalarNode, Tag: "!!int", Value: strconv.FormatInt(v.Int(), 10)}
	case reflect.Bool:
		return &yaml.Node{Kind: yaml.ScalarNode, Tag: "!!bool", Value: strconv.FormatBool(v.Bool())}
	case reflect.Float64:
		return &yaml.Node{Kind: yaml.ScalarNode, Tag: "!!float", Value: strconv.FormatFloat(v.Float(), 'g', -1, 64)}
	}
	return str(v.String())
}
