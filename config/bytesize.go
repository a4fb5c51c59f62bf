package config

import (
	"fmt"
	"math"
	"strconv"
	"strings"
)

// ByteSize is a size in bytes. In configuration it is an integer or a string with a unit:
// "10MiB", "512KiB", "1GiB" (powers of 1024) or "10MB", "1GB" (powers of 1000).
type ByteSize int64

// Binary size units.
const (
	KiB ByteSize = 1 << (10 * (iota + 1))
	MiB
	GiB
)

var byteUnits = []struct {
	suffix string
	mult   int64
}{
	// Longest suffixes first so "MiB" is not read as "B".
	{"kib", 1 << 10}, {"mib", 1 << 20}, {"gib", 1 << 30},
	{"kb", 1e3}, {"mb", 1e6}, {"gb", 1e9},
	{"b", 1},
}

// ParseByteSize parses an integer byte count or a number with a unit ("64MiB").
func ParseByteSize(s string) (ByteSize, error) {
	t := strings.TrimSpace(s)
	lower := strings.ToLower(t)
	mult := int64(1)
	for _, u := range byteUnits {
		if strings.HasSuffix(lower, u.suffix) {
			mult = u.mult
			t = strings.TrimSpace(t[:len(t)-len(u.suffix)])
			break
		}
	}
	// Whole numbers are read as integers: through float64 a count above 2^53 would load as
	// a neighbouring value and print back as something else.
	if n, err := strconv.ParseInt(t, 10, 64); err == nil {
		if n > math.MaxInt64/2/mult || n < -math.MaxInt64/2/mult {
			return 0, fmt.Errorf("invalid size %q (not a whole number of bytes in range)", s)
		}
		return ByteSize(n * mult), nil
	}
	n, err := strconv.ParseFloat(t, 64)
	if err != nil || t == "" || math.IsNaN(n) || math.IsInf(n, 0) || strings.ContainsAny(t, "xXpP_") {
		return 0, fmt.Errorf("invalid size %q (want bytes or a number with KiB, MiB, GiB, KB, MB, GB)", s)
	}
	v := n * float64(mult)
	// Fractions ("1.5MiB") go through float64, exact only up to 2^53 bytes.
	if v != math.Trunc(v) || math.Abs(v) > 1<<53 {
		return 0, fmt.Errorf("invalid size %q (not a whole number of bytes in range)", s)
	}
	return ByteSize(v), nil
}

// String renders the size with the largest binary unit that divides it ("10MiB"), so the
// printed configuration reads back to the same value.
func (b ByteSize) String() string {
	for _, u := range []struct {
		name string
		mult ByteSize
	}{{"GiB", GiB}, {"MiB", MiB}, {"KiB", KiB}} {
		if b != 0 && b%u.mult == 0 {
			return strconv.FormatInt(int64(b/u.mult), 10) + u.name
		}
	}
	return strconv.FormatInt(int64(b), 10)
}
