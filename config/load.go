package config

import (
	"fmt"
	"math"
	"os"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/pflag"
	"github.com/spf13/viper"
	"go.yaml.in/yaml/v3"
)

// EnvPrefix starts every environment variable the configuration reads.
const EnvPrefix = "GHLPROXY_"

// ConfigFlag names the flag (and, as GHLPROXY_CONFIG, the environment variable) that
// points at the YAML file.
const ConfigFlag = "config"

// EnvName is the environment variable of a key: "ratelimit.rate" → GHLPROXY_RATELIMIT_RATE.
func EnvName(key string) string {
	return EnvPrefix + strings.ToUpper(strings.ReplaceAll(key, ".", "_"))
}

// RegisterFlags adds --config and one flag per configuration key to fs, named by the key
// (--ratelimit.rate), with the default as its default and the field comment's first
// sentence as its help. Values are checked by Load, not by fs.Parse, so a bad value gets the
// same one-line error whether it came from a flag, the environment or the file.
func RegisterFlags(fs *pflag.FlagSet) {
	fs.String(ConfigFlag, "", "YAML configuration file; also "+EnvName(ConfigFlag))
	defaults := reflect.ValueOf(Default()).Elem()
	docs := fieldDocs()
	for _, k := range keys() {
		val := &flagValue{kind: kindOf(k.field.Type), s: render(defaults.FieldByIndex(k.index))}
		f := fs.VarPF(val, k.name, "", docs.usage(k))
		if val.kind == "boolean" {
			f.NoOptDefVal = "true"
		}
	}
}

// Load builds the configuration from, highest precedence first: the flags set on fs (as
// registered by RegisterFlags; nil for none), the GHLPROXY_* variables in env ("KEY=value"
// entries, e.g. os.Environ(); empty values count as unset), the YAML file named by --config
// or GHLPROXY_CONFIG, and the defaults. The result is validated; the error is one line
// naming the key. Warnings about allowed but risky values are in Config.Warnings.
func Load(fs *pflag.FlagSet, env []string) (*Config, error) {
	vars := make(map[string]string)
	for _, kv := range env {
		k, v, ok := strings.Cut(kv, "=")
		if ok && strings.HasPrefix(k, EnvPrefix) && v != "" {
			vars[k] = v
		}
	}
	path := vars[EnvName(ConfigFlag)]
	if fs != nil {
		if f := fs.Lookup(ConfigFlag); f != nil && f.Changed {
			path = f.Value.String()
		}
	}
	var data []byte
	if path != "" {
		var err error
		if data, err = os.ReadFile(path); err != nil {
			return nil, fmt.Errorf("config file: %w", err)
		}
	}
	return load(path, data, fs, vars)
}

// ValidateFile checks one YAML file on its own (with defaults, without flags or
// environment). It returns nil or a one-line error.
func ValidateFile(path string) error {
	_, err := LoadFile(path)
	return err
}

// LoadFile loads one YAML file on its own (with defaults, without flags or environment),
// as `ghlproxy config --validate FILE` does, which then checks what only the sidecar can
// (the routes the file names exist in the route table). Errors are one line.
func LoadFile(path string) (*Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("config file: %w", err)
	}
	return load(path, data, nil, nil)
}

// load layers the sources with viper: the file and then the environment are merged into
// viper's config layer (env wins), flags are bound above it, and every key any of them set
// is decoded over Default(). Viper's own AutomaticEnv is not used because it reads the
// process environment, which would make loading untestable in parallel.
func load(name string, data []byte, fs *pflag.FlagSet, vars map[string]string) (*Config, error) {
	layer := make(map[string]any)
	if len(data) > 0 {
		var doc any
		if err := yaml.Unmarshal(data, &doc); err != nil {
			return nil, fmt.Errorf("%s: invalid YAML: %s", name, oneLine(strings.TrimPrefix(err.Error(), "yaml: ")))
		}
		switch d := stringKeys(doc).(type) {
		case nil:
		case map[string]any:
			layer = d
		default:
			return nil, fmt.Errorf("%s: want a mapping of keys at the top level, got %s", name, describe(d))
		}
		if err := checkKeys(layer, reflect.TypeFor[Config](), "", name); err != nil {
			return nil, err
		}
	}
	ks := keys()
	for _, k := range ks {
		if v, ok := vars[EnvName(k.name)]; ok {
			setPath(layer, k.name, v)
		}
	}
	v := viper.New()
	if err := v.MergeConfigMap(layer); err != nil {
		return nil, fmt.Errorf("%s: %s", name, oneLine(err.Error()))
	}
	if fs != nil {
		for _, k := range ks {
			if f := fs.Lookup(k.name); f != nil {
				if err := v.BindPFlag(k.name, f); err != nil {
					return nil, fmt.Errorf("--%s: %s", k.name, oneLine(err.Error()))
				}
			}
		}
	}

	c := Default()
	d := decoder{proto: c.elementDefaults}
	root := reflect.ValueOf(c).Elem()
	for _, k := range ks {
		if !v.IsSet(k.name) {
			continue
		}
		if err := d.decode(k.name, v.Get(k.name), root.FieldByIndex(k.index)); err != nil {
			return nil, err
		}
	}
	c.normalize()
	if err := c.Validate(); err != nil {
		return nil, err
	}
	return c, nil
}

// elementDefaults is the starting value of one list element before its keys are decoded:
// what an element leaves out takes these.
func (c *Config) elementDefaults(t reflect.Type) reflect.Value {
	switch t {
	case reflect.TypeFor[CacheRoute]():
		return reflect.ValueOf(CacheRoute{
			StaleWhileRevalidate: c.Cache.StaleWhileRevalidate,
			StaleIfError:         c.Cache.StaleIfError,
		})
	case reflect.TypeFor[WarmTarget]():
		return reflect.ValueOf(WarmTarget{Version: "2021-07-28"})
	case reflect.TypeFor[WarmRequest]():
		return reflect.ValueOf(WarmRequest{Method: "GET"})
	}
	return reflect.New(t).Elem()
}

// normalize fills what is derived from other keys and canonicalises case.
func (c *Config) normalize() {
	c.RateLimit.Burst = c.effectiveBurst()
	for i, m := range c.Dedupe.Methods {
		c.Dedupe.Methods[i] = strings.ToUpper(strings.TrimSpace(m))
	}
	for i := range c.Warm.Targets {
		for j := range c.Warm.Targets[i].Requests {
			r := &c.Warm.Targets[i].Requests[j]
			r.Method = strings.ToUpper(r.Method)
		}
	}
	c.Log.Level = strings.ToLower(c.Log.Level)
	c.Log.Format = strings.ToLower(c.Log.Format)
}

// key is one configuration key: a leaf field of Config (lists count as leaves).
type key struct {
	name  string // "ratelimit.rate"
	index []int  // field path from Config
	field reflect.StructField
	owner reflect.Type // the struct declaring field, for its doc comment
}

// keys lists every configuration key in declaration order.
func keys() []key {
	var out []key
	var walk func(t reflect.Type, prefix string, index []int)
	walk = func(t reflect.Type, prefix string, index []int) {
		for i := range t.NumField() {
			f := t.Field(i)
			name := prefix + tagName(f)
			idx := append(slices.Clone(index), i)
			if f.Type.Kind() == reflect.Struct {
				walk(f.Type, name+".", idx)
				continue
			}
			out = append(out, key{name: name, index: idx, field: f, owner: t})
		}
	}
	walk(reflect.TypeFor[Config](), "", nil)
	return out
}

func tagName(f reflect.StructField) string {
	name, _, _ := strings.Cut(f.Tag.Get("yaml"), ",")
	return name
}

func fieldByTag(t reflect.Type, name string) (int, bool) {
	for i := range t.NumField() {
		if tagName(t.Field(i)) == name {
			return i, true
		}
	}
	return 0, false
}

// checkKeys rejects keys of the file that are not configuration keys, so a typo does not
// silently leave a default in place.
func checkKeys(m map[string]any, t reflect.Type, prefix, file string) error {
	for _, k := range slices.Sorted(mapKeys(m)) {
		path := prefix + k
		i, ok := fieldByTag(t, k)
		if !ok {
			if err := forbiddenKey(path); err != nil {
				return err
			}
			return fmt.Errorf("unknown key %q in %s", path, file)
		}
		ft := t.Field(i).Type
		switch {
		case ft.Kind() == reflect.Struct:
			switch sub := m[k].(type) {
			case nil:
			case map[string]any:
				if err := checkKeys(sub, ft, path+".", file); err != nil {
					return err
				}
			default:
				return fmt.Errorf("%s: want a mapping of keys, got %s", path, describe(m[k]))
			}
		case ft.Kind() == reflect.Slice && ft.Elem().Kind() == reflect.Struct:
			list, _ := m[k].([]any)
			for j, e := range list {
				if sub, ok := e.(map[string]any); ok {
					if err := checkKeys(sub, ft.Elem(), fmt.Sprintf("%s[%d].", path, j), file); err != nil {
						return err
					}
				}
			}
		}
	}
	return nil
}

// stringKeys turns the map[any]any that YAML makes of mappings with non-string keys into
// map[string]any, all the way down, so such keys are reported as unknown keys.
func stringKeys(v any) any {
	switch v := v.(type) {
	case map[string]any:
		for k, e := range v {
			v[k] = stringKeys(e)
		}
		return v
	case map[any]any:
		m := make(map[string]any, len(v))
		for k, e := range v {
			m[fmt.Sprint(k)] = stringKeys(e)
		}
		return m
	case []any:
		for i, e := range v {
			v[i] = stringKeys(e)
		}
	}
	return v
}

// forbiddenKey explains keys that are missing on purpose.
func forbiddenKey(path string) error {
	if strings.HasPrefix(path, "warm.targets[") && strings.HasSuffix(path, "].token") {
		return fmt.Errorf("%s: tokens are never written in the configuration; name an environment variable in token_env or a file in token_file", path)
	}
	return nil
}

func mapKeys(m map[string]any) func(func(string) bool) {
	return func(yield func(string) bool) {
		for k := range m {
			if !yield(k) {
				return
			}
		}
	}
}

// setPath stores val at the dotted key in m, creating (or replacing) the maps on the way.
func setPath(m map[string]any, key string, val any) {
	parts := strings.Split(key, ".")
	for _, p := range parts[:len(parts)-1] {
		sub, ok := m[p].(map[string]any)
		if !ok {
			sub = make(map[string]any)
			m[p] = sub
		}
		m = sub
	}
	m[parts[len(parts)-1]] = val
}

var (
	durationType = reflect.TypeFor[time.Duration]()
	byteSizeType = reflect.TypeFor[ByteSize]()
)

// decoder turns the loosely typed values of YAML, environment variables and flags into
// Config fields, with errors that name the key. It is hand-written rather than
// mapstructure so that every message is one line in our words.
type decoder struct {
	// proto gives the starting value of a list element of type t.
	proto func(t reflect.Type) reflect.Value
}

func (d decoder) decode(key string, raw any, dst reflect.Value) error {
	var err error
	switch dst.Type() {
	case durationType:
		var v time.Duration
		if v, err = toDuration(raw); err == nil {
			dst.SetInt(int64(v))
		}
	case byteSizeType:
		var v ByteSize
		if v, err = toByteSize(raw); err == nil {
			dst.SetInt(int64(v))
		}
	default:
		switch dst.Kind() {
		case reflect.String:
			var v string
			if v, err = toString(raw); err == nil {
				dst.SetString(v)
			}
		case reflect.Bool:
			var v bool
			if v, err = toBool(raw); err == nil {
				dst.SetBool(v)
			}
		case reflect.Int:
			var v int
			if v, err = toInt(raw); err == nil {
				dst.SetInt(int64(v))
			}
		case reflect.Float64:
			var v float64
			if v, err = toFloat(raw); err == nil {
				dst.SetFloat(v)
			}
		case reflect.Slice:
			return d.decodeList(key, raw, dst)
		case reflect.Struct:
			return d.decodeStruct(key, raw, dst)
		default:
			err = fmt.Errorf("unsupported field type %s", dst.Type())
		}
	}
	if err != nil {
		return fmt.Errorf("%s: %w", key, err)
	}
	return nil
}

func (d decoder) decodeList(key string, raw any, dst reflect.Value) error {
	elem := dst.Type().Elem()
	var items []any
	switch r := raw.(type) {
	case nil:
	case []any:
		items = r
	case []string: // a flag's comma-separated list, via viper
		for _, s := range r {
			items = append(items, s)
		}
	case string:
		if elem.Kind() == reflect.Struct {
			// Lists of structures arrive from flags and environment variables as YAML
			// (or JSON, which is YAML) text.
			var parsed any
			if err := yaml.Unmarshal([]byte(r), &parsed); err != nil {
				return fmt.Errorf("%s: invalid YAML list: %s", key, oneLine(strings.TrimPrefix(err.Error(), "yaml: ")))
			}
			if parsed != nil {
				list, ok := parsed.([]any)
				if !ok {
					return fmt.Errorf("%s: want a list, got %s", key, describe(parsed))
				}
				items = list
			}
		} else {
			for _, s := range strings.Split(r, ",") {
				if s = strings.TrimSpace(s); s != "" {
					items = append(items, s)
				}
			}
		}
	default:
		return fmt.Errorf("%s: want a list, got %s", key, describe(raw))
	}
	if len(items) == 0 {
		dst.SetZero() // nil, like an unset list, so printing and reloading changes nothing
		return nil
	}
	out := reflect.MakeSlice(dst.Type(), 0, len(items))
	for i, it := range items {
		e := reflect.New(elem).Elem()
		if elem.Kind() == reflect.Struct {
			e.Set(d.proto(elem))
		}
		if err := d.decode(fmt.Sprintf("%s[%d]", key, i), it, e); err != nil {
			return err
		}
		out = reflect.Append(out, e)
	}
	dst.Set(out)
	return nil
}

func (d decoder) decodeStruct(key string, raw any, dst reflect.Value) error {
	m, ok := raw.(map[string]any)
	if !ok {
		return fmt.Errorf("%s: want a mapping of keys, got %s", key, describe(raw))
	}
	for _, k := range slices.Sorted(mapKeys(m)) {
		path := key + "." + k
		i, ok := fieldByTag(dst.Type(), k)
		if !ok {
			if err := forbiddenKey(path); err != nil {
				return err
			}
			return fmt.Errorf("unknown key %q", path)
		}
		if err := d.decode(path, m[k], dst.Field(i)); err != nil {
			return err
		}
	}
	return nil
}

// describe renders a raw value for an error message: strings quoted, containers named.
func describe(raw any) string {
	switch r := raw.(type) {
	case string:
		return strconv.Quote(r)
	case map[string]any, map[any]any:
		return "a mapping"
	case []any, []string:
		return "a list"
	case nil:
		return "nothing"
	}
	return strconv.Quote(fmt.Sprint(raw))
}

func toString(raw any) (string, error) {
	switch r := raw.(type) {
	case string:
		return r, nil
	case nil:
		return "", nil
	case int, int64, uint64, float64, bool:
		return fmt.Sprint(r), nil
	}
	return "", fmt.Errorf("want a string, got %s", describe(raw))
}

func toBool(raw any) (bool, error) {
	switch r := raw.(type) {
	case bool:
		return r, nil
	case string:
		if b, err := strconv.ParseBool(strings.TrimSpace(r)); err == nil {
			return b, nil
		}
	}
	return false, fmt.Errorf("want true or false, got %s", describe(raw))
}

func toInt(raw any) (int, error) {
	switch r := raw.(type) {
	case int:
		return r, nil
	case int64:
		if int64(int(r)) == r {
			return int(r), nil
		}
	case uint64:
		if r <= uint64(int(^uint(0)>>1)) {
			return int(r), nil
		}
	case float64:
		if r == float64(int(r)) {
			return int(r), nil
		}
	case string:
		if n, err := strconv.Atoi(strings.TrimSpace(r)); err == nil {
			return n, nil
		}
	}
	return 0, fmt.Errorf("want an integer, got %s", describe(raw))
}

func toFloat(raw any) (float64, error) {
	switch r := raw.(type) {
	case float64:
		if !math.IsNaN(r) && !math.IsInf(r, 0) {
			return r, nil
		}
	case int:
		return float64(r), nil
	case int64:
		return float64(r), nil
	case uint64:
		return float64(r), nil
	case string:
		if f, err := strconv.ParseFloat(strings.TrimSpace(r), 64); err == nil && !math.IsNaN(f) && !math.IsInf(f, 0) {
			return f, nil
		}
	}
	return 0, fmt.Errorf("want a number, got %s", describe(raw))
}

func toDuration(raw any) (time.Duration, error) {
	var s string
	switch r := raw.(type) {
	case string:
		s = strings.TrimSpace(r)
	case int, int64, uint64, float64:
		// A bare number is only accepted when it is zero; "30" is ambiguous.
		s = fmt.Sprint(r)
	case time.Duration:
		return r, nil
	default:
		return 0, fmt.Errorf("want a duration such as \"30s\", got %s", describe(raw))
	}
	d, err := time.ParseDuration(s)
	if err != nil {
		why := strings.TrimPrefix(err.Error(), "time: ")
		if i := strings.Index(why, " in duration "); i >= 0 {
			why = why[:i]
		}
		if strings.HasPrefix(why, "invalid duration") {
			return 0, fmt.Errorf("invalid duration %q", s)
		}
		return 0, fmt.Errorf("invalid duration %q: %s", s, why)
	}
	return d, nil
}

func toByteSize(raw any) (ByteSize, error) {
	switch r := raw.(type) {
	case string:
		return ParseByteSize(r)
	case int:
		return ByteSize(r), nil
	case int64:
		return ByteSize(r), nil
	case uint64:
		if r <= 1<<62 {
			return ByteSize(r), nil
		}
	case float64:
		if r == float64(int64(r)) {
			return ByteSize(r), nil
		}
	}
	return 0, fmt.Errorf("invalid size %s (want bytes or a number with KiB, MiB, GiB, KB, MB, GB)", describe(raw))
}

// oneLine folds a multi-line message (yaml.v3 lists several errors on separate lines) into
// one line, so start-up failures stay a single log line.
func oneLine(s string) string {
	return strings.Join(strings.Fields(s), " ")
}

// flagValue holds a flag's text as given; Load decodes and checks it like any other
// source. Its Type names avoid pflag's own ("int", "bool", ...), which viper would convert
// itself, silently turning bad input into zero.
type flagValue struct {
	kind string
	s    string
	set  bool
}

func (f *flagValue) String() string { return f.s }
func (f *flagValue) Type() string   { return f.kind }

func (f *flagValue) Set(s string) error {
	if f.kind == "strings" && f.set && f.s != "" {
		// --dedupe.methods GET --dedupe.methods POST accumulates.
		s = f.s + "," + s
	}
	f.s, f.set = s, true
	return nil
}

// kindOf names a field's value kind for --help.
func kindOf(t reflect.Type) string {
	switch {
	case t == durationType:
		return "duration"
	case t == byteSizeType:
		return "bytes"
	case t.Kind() == reflect.Int:
		return "integer"
	case t.Kind() == reflect.Bool:
		return "boolean"
	case t.Kind() == reflect.Slice && t.Elem().Kind() == reflect.String:
		return "strings"
	case t.Kind() == reflect.Slice:
		return "yaml"
	}
	return "string"
}

// render is a field's value as flag text, which Load reads back to the same value.
func render(v reflect.Value) string {
	switch v.Type() {
	case durationType:
		return formatDuration(time.Duration(v.Int()))
	case byteSizeType:
		return ByteSize(v.Int()).String()
	}
	switch v.Kind() {
	case reflect.Slice:
		if v.Type().Elem().Kind() == reflect.String {
			return strings.Join(v.Interface().([]string), ",")
		}
		if v.Len() == 0 {
			return "[]"
		}
		b, err := yaml.Marshal(node(v))
		if err != nil {
			return "[]"
		}
		return strings.TrimSpace(string(b))
	}
	return fmt.Sprint(v.Interface())
}

// formatDuration is time.Duration.String without zero tails: "1m", not "1m0s".
func formatDuration(d time.Duration) string {
	s := d.String()
	if strings.HasSuffix(s, "m0s") {
		s = s[:len(s)-2]
	}
	if strings.HasSuffix(s, "h0m") {
		s = s[:len(s)-2]
	}
	return s
}
