// Package fastkms is a fake AWS KMS for scale benchmarks: it speaks the AWS
// JSON 1.1 protocol that aws-sdk-go-v2's kms client uses (POST /, header
// X-Amz-Target: TrentService.<Op>, JSON bodies, errors as {"__type", "message"}
// with HTTP 400) and answers the calls of the audit for an inventory of n keys
// in constant time and memory: every key is a pure function of its index i
// (0..n-1). Signatures are not checked.
//
// Key ids look like random UUIDs; the last 12 hex digits hold i under an
// invertible scramble, so an id (or a key ARN) maps back to i in O(1), and
// an id that is not the one generated for i < n is NotFoundException.
//
// The mix repeats every 100 keys (slot = (37*i + 11) mod 100, so neighbours
// differ); per 100 keys, with the exporter's default policy (maximum period
// 365 days, exemption tag kms-rotation-exempt):
//
//	80  customer symmetric, rotation on, 365 days        compliant
//	 7  customer symmetric, rotation off                 noncompliant
//	 1  rotation off, exemption expired (until 2024-06-30) noncompliant
//	 2  rotation on, 730 days                            noncompliant (period above policy)
//	 1  rotation off, exempt by tag, until in the future exempt
//	 4  asymmetric: RSA_2048 (encrypt, sign), ECC_NIST_P256, ECC_SECG_P256K1  not_applicable
//	 2  disabled (one with rotation on, one off)         not_applicable
//	 1  pending deletion                                 not_applicable
//	 1  EXTERNAL origin (imported material)              not_applicable
//	 1  AWS-managed, rotating every 365 days             not_applicable
//
// Expected gives the exact counts for any n. Every customer key carries the
// tag service=service-<i%5000>; every 4th customer key (i%4 == 0) has the
// alias alias/service-<i%5000>/key-<i>. ListAliases lists first a few
// predefined alias/aws/* names without TargetKeyId, as AWS does for services
// that have not created their AWS-managed key yet.
//
// GetKeyRotationStatus answers as AWS does (docs/aws-semantics.md): the period and
// next rotation date for rotating keys; the kept setting for disabled keys;
// false for keys pending deletion; UnsupportedOperationException for
// asymmetric keys (as emulators do) and EXTERNAL keys.
//
// EnableKeyRotation and DisableKeyRotation change the rotation setting of a
// customer key that can rotate (enabled, symmetric, AWS_KMS origin), kept
// per key in a small map over the generated one; for the other keys they
// fail as AWS does: UnsupportedOperationException (asymmetric, EXTERNAL),
// DisabledException (disabled), KMSInvalidStateException (pending deletion),
// AccessDeniedException (AWS-managed). Expected counts the inventory as
// generated, before any such change.
//
// Key material (docs/aws-semantics.md, "Key material and its rotations"):
// every symmetric key has a history of rotations, a pure function of i and
// Options.Now: keys rotating automatically (every 365 or 730 days, and
// AWS-managed keys every 365) rotated every period since their creation
// (their next rotation date is a period after the last); of the customer
// symmetric keys with AWS_KMS origin, by a hash of i, about 60% were never
// rotated on demand, 30% one to three times, 9% four to twenty-four times
// and 1% the 25 times KMS allows (at dates spread between their creation and
// now). ListKeyRotations lists that history (Limit 1..1000, default 100;
// ALL_KEY_MATERIAL adds the first material, without RotationDate), and
// DescribeKey reports the last material as CurrentKeyMaterialId; asymmetric
// keys have neither (UnsupportedOperationException), EXTERNAL keys their
// one imported material. History is an entry point for tests. Each call
// costs at most the length of one key's history (a few dozen entries),
// whatever n.
package fastkms

import (
	"encoding/json"
	"io"
	"net"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/kms-exporter/kms_exporter/policy"
)

// Account is the account id of every key.
const Account = "111122223333"

// DefaultRegion is the region when Options leave it empty.
const DefaultRegion = "eu-west-1"

// Options for a fake.
type Options struct {
	// Region of the keys' ARNs; default DefaultRegion.
	Region string
	// Now is the instant dates are computed from (creation dates before it,
	// next rotation dates and exemptions after it); default time.Now().
	Now time.Time
}

// Operations the fake answers, in the order of Calls.
var Operations = []string{"ListKeys", "ListAliases", "DescribeKey", "GetKeyRotationStatus", "ListResourceTags",
	"ListKeyRotations", "EnableKeyRotation", "DisableKeyRotation"}

const (
	opListKeys = iota
	opListAliases
	opDescribeKey
	opGetKeyRotationStatus
	opListResourceTags
	opListKeyRotations
	opEnableKeyRotation
	opDisableKeyRotation
	opOther
	numOps
)

// Handler answers the KMS calls for n keys. It is safe for concurrent use.
type Handler struct {
	n         int
	region    string
	keyPrefix string // arn:aws:kms:REGION:ACCOUNT:key/
	aliasARN  string // arn:aws:kms:REGION:ACCOUNT:
	now       time.Time
	created   float64 // earliest creation date, epoch seconds
	span      uint64  // creation dates fall in [created, created+span)
	until     string  // the future exemption date
	calls     [numOps]atomic.Int64

	// The rotation settings changed by EnableKeyRotation and
	// DisableKeyRotation, by key index; changed is set once one is, so
	// that GetKeyRotationStatus takes no lock until then.
	settingsMu sync.Mutex
	settings   map[int]setting
	changed    atomic.Bool
}

// setting is a key's rotation setting as last changed.
type setting struct {
	enabled bool
	period  int     // days, when enabled
	next    float64 // next rotation date, epoch seconds, when enabled
}

// New returns the handler of an inventory of n keys.
func New(n int, opts Options) *Handler {
	if opts.Region == "" {
		opts.Region = DefaultRegion
	}
	if opts.Now.IsZero() {
		opts.Now = time.Now()
	}
	first := time.Date(2019, 1, 1, 0, 0, 0, 0, time.UTC)
	return &Handler{
		n:         n,
		region:    opts.Region,
		keyPrefix: "arn:aws:kms:" + opts.Region + ":" + Account + ":key/",
		aliasARN:  "arn:aws:kms:" + opts.Region + ":" + Account + ":",
		now:       opts.Now,
		created:   float64(first.Unix()),
		span:      uint64(max(opts.Now.Add(-30*24*time.Hour).Sub(first), time.Hour).Seconds()),
		until:     opts.Now.UTC().AddDate(0, 6, 0).Format(time.DateOnly),
	}
}

// Len is the number of keys.
func (h *Handler) Len() int { return h.n }

// Calls returns how many calls of each operation were answered (errors
// included); "other" counts unknown operations.
func (h *Handler) Calls() map[string]int64 {
	out := make(map[string]int64, numOps)
	for i, op := range Operations {
		out[op] = h.calls[i].Load()
	}
	out["other"] = h.calls[opOther].Load()
	return out
}

// ARN is the ARN of key i.
func (h *Handler) ARN(i int) string { return h.keyPrefix + KeyID(i) }

// Rotating says whether key i is of the most common class: a customer
// symmetric key rotating every 365 days, compliant until its rotation is
// disabled.
func Rotating(i int) bool { return classOf(i) == rotating }

// The kinds of key, one per slot of the 100-key cycle.
type class uint8

const (
	rotating         class = iota // customer symmetric, rotation on, 365 days
	rotationOff                   // rotation off
	exemptExpired                 // rotation off, exemption expired
	longPeriod                    // rotation on, 730 days
	exempt                        // rotation off, exempt until a future date
	rsaEncrypt                    // RSA_2048 ENCRYPT_DECRYPT
	rsaSign                       // RSA_2048 SIGN_VERIFY
	eccSign                       // ECC_NIST_P256 SIGN_VERIFY
	eccK1Sign                     // ECC_SECG_P256K1 SIGN_VERIFY
	disabledRotating              // Disabled, rotation setting on
	disabledOff                   // Disabled, rotation setting off
	pendingDeletion               // PendingDeletion
	external                      // Origin EXTERNAL
	awsManaged                    // KeyManager AWS
)

// mix is how many of the 100 slots each class takes.
var mix = []struct {
	class  class
	slots  int
	status policy.Status
}{
	{rotating, 80, policy.Compliant},
	{rotationOff, 7, policy.Noncompliant},
	{exemptExpired, 1, policy.Noncompliant},
	{longPeriod, 2, policy.Noncompliant},
	{exempt, 1, policy.Exempt},
	{rsaEncrypt, 1, policy.NotApplicable},
	{rsaSign, 1, policy.NotApplicable},
	{eccSign, 1, policy.NotApplicable},
	{eccK1Sign, 1, policy.NotApplicable},
	{disabledRotating, 1, policy.NotApplicable},
	{disabledOff, 1, policy.NotApplicable},
	{pendingDeletion, 1, policy.NotApplicable},
	{external, 1, policy.NotApplicable},
	{awsManaged, 1, policy.NotApplicable},
}

var (
	slots    [100]class
	statusOf = map[class]policy.Status{}
)

func init() {
	s := 0
	for _, m := range mix {
		for range m.slots {
			slots[s] = m.class
			s++
		}
		statusOf[m.class] = m.status
	}
	if s != len(slots) {
		panic("fastkms: the mix does not fill 100 slots")
	}
}

func classOf(i int) class { return slots[(37*i+11)%100] }

// Expected returns how many of n keys the exporter should report per verdict
// status with its default policy (every status present, unknown 0).
func Expected(n int) map[string]int {
	out := map[string]int{}
	for _, s := range policy.Statuses {
		out[string(s)] = 0
	}
	for _, m := range mix {
		out[string(m.status)] += m.slots * (n / 100)
	}
	for i := n / 100 * 100; i < n; i++ {
		out[string(statusOf[classOf(i)])]++
	}
	return out
}

// Key ids. The 32 hex digits of a UUID (version 4 layout): 18 pseudo-random
// from a hash of i, the last 12 the scrambled index.

const mask48 = 1<<48 - 1

const (
	mul1 = 0x9e3779b97f4b // odd multipliers, invertible modulo 2^48
	mul2 = 0xc2b2ae3d27d5
)

var inv1, inv2 = inverse(mul1), inverse(mul2)

// inverse returns the inverse of odd m modulo 2^64 (Newton's iteration),
// which is also its inverse modulo 2^48.
func inverse(m uint64) uint64 {
	x := m
	for range 5 {
		x *= 2 - m*x
	}
	return x
}

func scramble(i uint64) uint64 {
	x := i * mul1 & mask48
	x ^= x >> 24
	x = x * mul2 & mask48
	return x ^ x>>24
}

func unscramble(x uint64) uint64 {
	x ^= x >> 24
	x = x * inv2 & mask48
	x ^= x >> 24
	return x * inv1 & mask48
}

// splitmix64's finaliser: a good hash of a counter.
func hash(x uint64) uint64 {
	x += 0x9e3779b97f4a7c15
	x = (x ^ x>>30) * 0xbf58476d1ce4e5b9
	x = (x ^ x>>27) * 0x94d049bb133111eb
	return x ^ x>>31
}

const hexDigits = "0123456789abcdef"

const idLen = 36

// appendID appends the id of key i.
func appendID(b []byte, i int) []byte {
	var id [idLen]byte
	h := hash(uint64(i))
	put := func(at, digits int, v uint64) {
		for d := digits - 1; d >= 0; d-- {
			id[at+d] = hexDigits[v&15]
			v >>= 4
		}
	}
	put(0, 8, h)
	id[8] = '-'
	put(9, 4, h>>32)
	id[13] = '-'
	id[14] = '4'
	put(15, 3, h>>48)
	id[18] = '-'
	id[19] = hexDigits[8|(h>>60)&3]
	put(20, 3, hash(h)) // h is spent: hash it again
	id[23] = '-'
	put(24, 12, scramble(uint64(i)))
	return append(b, id[:]...)
}

// KeyID is the id of key i (the same in every fake, whatever its size or region).
func KeyID(i int) string { return string(appendID(nil, i)) }

// index returns the index of the key with this id or key ARN, if it is one
// of the inventory's.
func (h *Handler) index(key string) (int, bool) {
	key = strings.TrimPrefix(key, h.keyPrefix)
	if len(key) != idLen {
		return 0, false
	}
	x, err := strconv.ParseUint(key[24:], 16, 64)
	if err != nil {
		return 0, false
	}
	i := unscramble(x)
	if i >= uint64(h.n) {
		return 0, false
	}
	var buf [idLen]byte
	if string(appendID(buf[:0], int(i))) != key {
		return 0, false
	}
	return int(i), true
}

// hasAlias says whether key i has the alias alias/service-<i%5000>/key-<i>.
func hasAlias(i int) bool { return i%4 == 0 && classOf(i) != awsManaged }

func appendAliasName(b []byte, i int) []byte {
	b = append(b, "alias/service-"...)
	b = strconv.AppendInt(b, int64(i%5000), 10)
	b = append(b, "/key-"...)
	return strconv.AppendInt(b, int64(i), 10)
}

// aliasIndex returns the key of an alias name or alias ARN, if it is one of
// the inventory's.
func (h *Handler) aliasIndex(name string) (int, bool) {
	name = strings.TrimPrefix(name, h.aliasARN)
	_, num, ok := strings.Cut(name, "/key-")
	if !ok {
		return 0, false
	}
	i, err := strconv.Atoi(num)
	if err != nil || i < 0 || i >= h.n || !hasAlias(i) || string(appendAliasName(nil, i)) != name {
		return 0, false
	}
	return i, true
}

// predefined are AWS-managed aliases listed without TargetKeyId.
var predefined = []string{"alias/aws/acm", "alias/aws/dynamodb", "alias/aws/ebs", "alias/aws/elasticfilesystem",
	"alias/aws/es", "alias/aws/glue", "alias/aws/kinesisvideo", "alias/aws/lambda", "alias/aws/rds",
	"alias/aws/redshift", "alias/aws/s3", "alias/aws/secretsmanager", "alias/aws/ssm", "alias/aws/xray"}

// The alias list: positions below len(predefined) are the predefined aliases,
// position len(predefined)+j the alias of key 4j, where it has one.

// nextAlias returns the first position at or after pos that holds an alias.
func (h *Handler) nextAlias(pos int) (int, bool) {
	for ; ; pos++ {
		if pos < len(predefined) {
			return pos, true
		}
		i := 4 * (pos - len(predefined))
		if i >= h.n {
			return pos, false
		}
		if hasAlias(i) {
			return pos, true
		}
	}
}

// request is every field of the requests the fake reads.
type request struct {
	KeyID                string `json:"KeyId"`
	Limit                *int   `json:"Limit"`
	Marker               string `json:"Marker"`
	RotationPeriodInDays *int   `json:"RotationPeriodInDays"`
	IncludeKeyMaterial   string `json:"IncludeKeyMaterial"`
}

var bufs = sync.Pool{New: func() any { b := make([]byte, 0, 4096); return &b }}

var jsonContentType = []string{"application/x-amz-json-1.1"}

const target = "TrentService."

func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	bp := bufs.Get().(*[]byte)
	defer bufs.Put(bp)
	body, err := readAll(r.Body, (*bp)[:0])
	if r.Method != http.MethodPost || err != nil {
		http.Error(w, "POST a JSON 1.1 request", http.StatusBadRequest)
		return
	}
	var req request
	if len(body) > 0 {
		if err := json.Unmarshal(body, &req); err != nil {
			h.fail(w, &apiError{"SerializationException", "cannot read the request body"})
			return
		}
	}
	// The answer reuses the request's buffer.
	out := body[:0]
	var fault *apiError
	switch op, _ := strings.CutPrefix(r.Header.Get("X-Amz-Target"), target); op {
	case "ListKeys":
		h.calls[opListKeys].Add(1)
		out, fault = h.listKeys(out, req)
	case "ListAliases":
		h.calls[opListAliases].Add(1)
		out, fault = h.listAliases(out, req)
	case "DescribeKey":
		h.calls[opDescribeKey].Add(1)
		out, fault = h.describeKey(out, req)
	case "GetKeyRotationStatus":
		h.calls[opGetKeyRotationStatus].Add(1)
		out, fault = h.rotationStatus(out, req)
	case "ListResourceTags":
		h.calls[opListResourceTags].Add(1)
		out, fault = h.listResourceTags(out, req)
	case "ListKeyRotations":
		h.calls[opListKeyRotations].Add(1)
		out, fault = h.listKeyRotations(out, req)
	case "EnableKeyRotation":
		h.calls[opEnableKeyRotation].Add(1)
		fault = h.setRotation(req, true)
	case "DisableKeyRotation":
		h.calls[opDisableKeyRotation].Add(1)
		fault = h.setRotation(req, false)
	default:
		h.calls[opOther].Add(1)
		fault = &apiError{"UnknownOperationException", "operation " + strconv.Quote(op) + " is not supported by fastkms"}
	}
	*bp = out[:0]
	if fault != nil {
		h.fail(w, fault)
		return
	}
	hdr := w.Header()
	hdr["Content-Type"] = jsonContentType
	hdr["Content-Length"] = []string{strconv.Itoa(len(out))}
	_, _ = w.Write(out)
}

// readAll reads r into b; the requests are small.
func readAll(r io.Reader, b []byte) ([]byte, error) {
	for {
		if len(b) == cap(b) {
			b = append(b, 0)[:len(b)]
		}
		n, err := r.Read(b[len(b):cap(b)])
		b = b[:len(b)+n]
		if err == io.EOF {
			return b, nil
		}
		if err != nil {
			return b, err
		}
	}
}

// apiError is an error answer of the API.
type apiError struct{ code, message string }

func (h *Handler) fail(w http.ResponseWriter, e *apiError) {
	msg, _ := json.Marshal(e.message)
	b := make([]byte, 0, 64+len(msg))
	b = append(b, `{"__type":"`...)
	b = append(b, e.code...)
	b = append(b, `","message":`...)
	b = append(b, msg...)
	b = append(b, '}')
	hdr := w.Header()
	hdr["Content-Type"] = jsonContentType
	hdr["Content-Length"] = []string{strconv.Itoa(len(b))}
	w.WriteHeader(http.StatusBadRequest)
	_, _ = w.Write(b)
}

func notFound(key string) *apiError {
	return &apiError{"NotFoundException", "Key '" + key + "' does not exist"}
}

// limit reads the request's Limit: def when absent, an error outside 1..most.
func limit(req request, def, most int) (int, *apiError) {
	if req.Limit == nil {
		return def, nil
	}
	if l := *req.Limit; l >= 1 && l <= most {
		return l, nil
	}
	return 0, &apiError{"ValidationException", "1 validation error detected: Value '" + strconv.Itoa(*req.Limit) +
		"' at 'limit' failed to satisfy constraint: Member must have value between 1 and " + strconv.Itoa(most)}
}

// marker reads the request's Marker, a position in [0, end].
func marker(req request, end int) (int, *apiError) {
	if req.Marker == "" {
		return 0, nil
	}
	m, err := strconv.Atoi(req.Marker)
	if err != nil || m < 0 || m > end {
		return 0, &apiError{"InvalidMarkerException", "invalid marker " + strconv.Quote(req.Marker)}
	}
	return m, nil
}

// Strings written with appendString are the fake's own ASCII text (ids,
// ARNs, names, constants): nothing to escape.
func appendString(b []byte, s string) []byte {
	b = append(b, '"')
	b = append(b, s...)
	return append(b, '"')
}

// appendEpoch writes a date as the API does: epoch seconds with milliseconds.
func appendEpoch(b []byte, seconds float64) []byte {
	return strconv.AppendFloat(b, seconds, 'f', 3, 64)
}

func (h *Handler) appendARN(b []byte, i int) []byte {
	b = append(b, '"')
	b = append(b, h.keyPrefix...)
	b = appendID(b, i)
	return append(b, '"')
}

func (h *Handler) listKeys(b []byte, req request) ([]byte, *apiError) {
	l, err := limit(req, 100, 1000)
	if err != nil {
		return b, err
	}
	from, err := marker(req, h.n)
	if err != nil {
		return b, err
	}
	to := min(from+l, h.n)
	b = append(b, `{"Keys":[`...)
	for i := from; i < to; i++ {
		if i > from {
			b = append(b, ',')
		}
		b = append(b, `{"KeyArn":`...)
		b = h.appendARN(b, i)
		b = append(b, `,"KeyId":"`...)
		b = appendID(b, i)
		b = append(b, `"}`...)
	}
	b = append(b, ']')
	if to < h.n {
		b = append(b, `,"NextMarker":"`...)
		b = strconv.AppendInt(b, int64(to), 10)
		b = append(b, `","Truncated":true}`...)
	} else {
		b = append(b, `,"Truncated":false}`...)
	}
	return b, nil
}

func (h *Handler) listAliases(b []byte, req request) ([]byte, *apiError) {
	l, err := limit(req, 50, 100)
	if err != nil {
		return b, err
	}
	if req.KeyID != "" {
		// The aliases of one key.
		i, ok := h.index(req.KeyID)
		if !ok {
			return b, notFound(req.KeyID)
		}
		b = append(b, `{"Aliases":[`...)
		if hasAlias(i) {
			b = h.appendAlias(b, i)
		}
		return append(b, `],"Truncated":false}`...), nil
	}
	end := len(predefined) + (h.n+3)/4
	from, err := marker(req, end)
	if err != nil {
		return b, err
	}
	b = append(b, `{"Aliases":[`...)
	pos, ok := h.nextAlias(from)
	for count := 0; ok && count < l; count++ {
		if count > 0 {
			b = append(b, ',')
		}
		if pos < len(predefined) {
			b = append(b, `{"AliasArn":"`...)
			b = append(b, h.aliasARN...)
			b = append(b, predefined[pos]...)
			b = append(b, `","AliasName":`...)
			b = appendString(b, predefined[pos])
			b = append(b, '}')
		} else {
			b = h.appendAlias(b, 4*(pos-len(predefined)))
		}
		pos, ok = h.nextAlias(pos + 1)
	}
	b = append(b, ']')
	if ok {
		b = append(b, `,"NextMarker":"`...)
		b = strconv.AppendInt(b, int64(pos), 10)
		b = append(b, `","Truncated":true}`...)
	} else {
		b = append(b, `,"Truncated":false}`...)
	}
	return b, nil
}

func (h *Handler) appendAlias(b []byte, i int) []byte {
	created := h.creation(i)
	b = append(b, `{"AliasArn":"`...)
	b = append(b, h.aliasARN...)
	b = appendAliasName(b, i)
	b = append(b, `","AliasName":"`...)
	b = appendAliasName(b, i)
	b = append(b, `","CreationDate":`...)
	b = appendEpoch(b, created)
	b = append(b, `,"LastUpdatedDate":`...)
	b = appendEpoch(b, created)
	b = append(b, `,"TargetKeyId":"`...)
	b = appendID(b, i)
	return append(b, `"}`...)
}

// creation is key i's creation date in epoch seconds, with milliseconds.
func (h *Handler) creation(i int) float64 {
	ms := hash(uint64(i)^0x5bd1e995) % (h.span * 1000)
	return h.created + float64(ms)/1000
}

// rotation returns key i's rotation setting.
func rotation(c class) (enabled bool, periodDays int) {
	switch c {
	case rotating, disabledRotating, awsManaged:
		return true, 365
	case longPeriod:
		return true, 730
	}
	return false, 0
}

// nextRotation is the first rotation after now of a key created at
// created (epoch seconds) rotating every period days.
func (h *Handler) nextRotation(created float64, periodDays int) float64 {
	period := float64(periodDays) * 86400
	now := float64(h.now.UnixMilli()) / 1000
	return created + (float64(int((now-created)/period))+1)*period
}

var (
	symmetricAlgorithms  = `["SYMMETRIC_DEFAULT"]`
	rsaEncryptAlgorithms = `["RSAES_OAEP_SHA_1","RSAES_OAEP_SHA_256"]`
	rsaSignAlgorithms    = `["RSASSA_PKCS1_V1_5_SHA_256","RSASSA_PKCS1_V1_5_SHA_384","RSASSA_PKCS1_V1_5_SHA_512","RSASSA_PSS_SHA_256","RSASSA_PSS_SHA_384","RSASSA_PSS_SHA_512"]`
	eccSignAlgorithms    = `["ECDSA_SHA_256"]`
)

var awsServices = []string{"ebs", "s3", "rds", "lambda", "secretsmanager", "dynamodb", "sns", "sqs"}

func (h *Handler) describeKey(b []byte, req request) ([]byte, *apiError) {
	i, ok := h.index(req.KeyID)
	if !ok {
		if i, ok = h.aliasIndex(req.KeyID); !ok {
			return b, notFound(req.KeyID)
		}
	}
	c := classOf(i)
	created := h.creation(i)
	spec, usage, algorithms, signing := "SYMMETRIC_DEFAULT", "ENCRYPT_DECRYPT", symmetricAlgorithms, ""
	switch c {
	case rsaEncrypt:
		spec, algorithms = "RSA_2048", rsaEncryptAlgorithms
	case rsaSign:
		spec, usage, algorithms, signing = "RSA_2048", "SIGN_VERIFY", "", rsaSignAlgorithms
	case eccSign:
		spec, usage, algorithms, signing = "ECC_NIST_P256", "SIGN_VERIFY", "", eccSignAlgorithms
	case eccK1Sign:
		spec, usage, algorithms, signing = "ECC_SECG_P256K1", "SIGN_VERIFY", "", eccSignAlgorithms
	}
	state := "Enabled"
	switch c {
	case disabledRotating, disabledOff:
		state = "Disabled"
	case pendingDeletion:
		state = "PendingDeletion"
	}

	b = append(b, `{"KeyMetadata":{"AWSAccountId":"`+Account+`","Arn":`...)
	b = h.appendARN(b, i)
	b = append(b, `,"CreationDate":`...)
	b = appendEpoch(b, created)
	if hasMaterial(c) {
		b = append(b, `,"CurrentKeyMaterialId":"`...)
		b = appendMaterialID(b, i, h.rotations(i, c))
		b = append(b, '"')
	}
	b = append(b, `,"CustomerMasterKeySpec":"`...)
	b = append(b, spec...)
	if c == pendingDeletion {
		b = append(b, `","DeletionDate":`...)
		b = appendEpoch(b, float64(h.now.Unix()/86400*86400)+float64(7+i%24)*86400)
		b = append(b, `,"Description":"`...)
	} else {
		b = append(b, `","Description":"`...)
	}
	if c == awsManaged {
		b = append(b, "Default key that protects my "...)
		b = append(b, awsServices[i%len(awsServices)]...)
		b = append(b, " resources when no other key is defined"...)
	} else {
		b = append(b, "service-"...)
		b = strconv.AppendInt(b, int64(i%5000), 10)
		b = append(b, " data key"...)
	}
	b = append(b, `","Enabled":`...)
	b = strconv.AppendBool(b, state == "Enabled")
	if algorithms != "" {
		b = append(b, `,"EncryptionAlgorithms":`...)
		b = append(b, algorithms...)
	}
	if c == external {
		b = append(b, `,"ExpirationModel":"KEY_MATERIAL_DOES_NOT_EXPIRE"`...)
	}
	b = append(b, `,"KeyId":"`...)
	b = appendID(b, i)
	b = append(b, `","KeyManager":"`...)
	if c == awsManaged {
		b = append(b, "AWS"...)
	} else {
		b = append(b, "CUSTOMER"...)
	}
	b = append(b, `","KeySpec":"`...)
	b = append(b, spec...)
	b = append(b, `","KeyState":"`...)
	b = append(b, state...)
	b = append(b, `","KeyUsage":"`...)
	b = append(b, usage...)
	b = append(b, `","MultiRegion":false,"Origin":"`...)
	if c == external {
		b = append(b, "EXTERNAL"...)
	} else {
		b = append(b, "AWS_KMS"...)
	}
	b = append(b, '"')
	if c == pendingDeletion {
		b = append(b, `,"PendingDeletionWindowInDays":30`...)
	}
	if signing != "" {
		b = append(b, `,"SigningAlgorithms":`...)
		b = append(b, signing...)
	}
	return append(b, "}}"...), nil
}

func (h *Handler) rotationStatus(b []byte, req request) ([]byte, *apiError) {
	i, ok := h.index(req.KeyID)
	if !ok {
		return b, notFound(req.KeyID)
	}
	c := classOf(i)
	if cannotRotate(c) {
		return b, h.unsupported(i)
	}
	enabled, period := rotation(c)
	if c == pendingDeletion {
		enabled = false
	}
	next := 0.0
	if s, ok := h.setting(i); ok {
		enabled, period, next = s.enabled, s.period, s.next
	}
	b = append(b, `{"KeyId":`...)
	b = h.appendARN(b, i)
	b = append(b, `,"KeyRotationEnabled":`...)
	b = strconv.AppendBool(b, enabled)
	if enabled {
		if c != disabledRotating { // a disabled key does not rotate
			if next == 0 {
				next = h.nextRotation(h.creation(i), period)
			}
			b = append(b, `,"NextRotationDate":`...)
			b = appendEpoch(b, next)
		}
		b = append(b, `,"RotationPeriodInDays":`...)
		b = strconv.AppendInt(b, int64(period), 10)
	}
	return append(b, '}'), nil
}

// cannotRotate says whether keys of class c cannot rotate automatically
// (their key spec or origin does not allow it).
func cannotRotate(c class) bool {
	switch c {
	case rsaEncrypt, rsaSign, eccSign, eccK1Sign, external:
		return true
	}
	return false
}

func (h *Handler) unsupported(i int) *apiError {
	return &apiError{"UnsupportedOperationException", h.ARN(i) + " origin or key spec does not support automatic key rotation"}
}

// setting returns key i's rotation setting if it was changed.
func (h *Handler) setting(i int) (setting, bool) {
	if !h.changed.Load() {
		return setting{}, false
	}
	h.settingsMu.Lock()
	defer h.settingsMu.Unlock()
	s, ok := h.settings[i]
	return s, ok
}

// Rotation periods EnableKeyRotation accepts, in days.
const (
	minPeriod     = 90
	maxPeriod     = 2560
	defaultPeriod = 365
)

// setRotation is EnableKeyRotation (enable) or DisableKeyRotation. Enabling
// sets the period (365 days when the request has none, as AWS does) and the
// next rotation date one period from now, also on a key that was rotating.
// They answer nothing on success: an empty body, as AWS does.
func (h *Handler) setRotation(req request, enable bool) *apiError {
	period := defaultPeriod
	if p := req.RotationPeriodInDays; enable && p != nil {
		if *p < minPeriod || *p > maxPeriod {
			return &apiError{"ValidationException", "1 validation error detected: Value '" + strconv.Itoa(*p) +
				"' at 'rotationPeriodInDays' failed to satisfy constraint: Member must have value between " +
				strconv.Itoa(minPeriod) + " and " + strconv.Itoa(maxPeriod)}
		}
		period = *p
	}
	i, ok := h.index(req.KeyID)
	if !ok {
		return notFound(req.KeyID)
	}
	switch c := classOf(i); {
	case cannotRotate(c):
		return h.unsupported(i)
	case c == disabledRotating || c == disabledOff:
		return &apiError{"DisabledException", h.ARN(i) + " is disabled."}
	case c == pendingDeletion:
		return &apiError{"KMSInvalidStateException", h.ARN(i) + " is pending deletion."}
	case c == awsManaged:
		op := "kms:DisableKeyRotation"
		if enable {
			op = "kms:EnableKeyRotation"
		}
		return &apiError{"AccessDeniedException", "User: arn:aws:iam::" + Account + ":user/fastkms is not authorized to perform: " +
			op + " on resource: " + h.ARN(i) + " because no resource-based policy allows the " + op + " action"}
	}
	s := setting{enabled: enable}
	if enable {
		s.period = period
		s.next = float64(time.Now().AddDate(0, 0, period).UnixMilli()) / 1000
	}
	h.settingsMu.Lock()
	if h.settings == nil {
		h.settings = map[int]setting{}
	}
	h.settings[i] = s
	h.settingsMu.Unlock()
	h.changed.Store(true)
	return nil
}

func (h *Handler) listResourceTags(b []byte, req request) ([]byte, *apiError) {
	if _, err := limit(req, 50, 50); err != nil {
		return b, err
	}
	i, ok := h.index(req.KeyID)
	if !ok {
		return b, notFound(req.KeyID)
	}
	b = append(b, `{"Tags":[`...)
	switch c := classOf(i); c {
	case awsManaged:
		// AWS-managed keys carry no tags.
	default:
		if c == exempt || c == exemptExpired {
			until := h.until
			reason := "batch job re-encrypts with a new key every quarter"
			if c == exemptExpired {
				until, reason = "2024-06-30", "migration to a new key pending"
			}
			b = append(b, `{"TagKey":"kms-rotation-exempt","TagValue":"`...)
			b = append(b, reason...)
			b = append(b, `"},{"TagKey":"kms-rotation-exempt-until","TagValue":"`...)
			b = append(b, until...)
			b = append(b, `"},`...)
		}
		b = append(b, `{"TagKey":"service","TagValue":"service-`...)
		b = strconv.AppendInt(b, int64(i%5000), 10)
		b = append(b, `"}`...)
	}
	return append(b, `],"Truncated":false}`...), nil
}

// Server is a Handler served over HTTP on a free loopback port.
type Server struct {
	*Handler
	// URL is the endpoint to give the SDK (BaseEndpoint, AWS_ENDPOINT_URL_KMS).
	URL string
	srv *http.Server
	l   net.Listener
}

// Start serves an inventory of n keys on 127.0.0.1 until Close.
func Start(n int, opts Options) (*Server, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	h := New(n, opts)
	s := &Server{Handler: h, URL: "http://" + l.Addr().String(), l: l,
		srv: &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second}}
	go func() { _ = s.srv.Serve(l) }()
	return s, nil
}

// Close stops serving and closes every connection.
func (s *Server) Close() error { return s.srv.Close() }

// Key material and its rotations.

// MaxOnDemandRotations is how many on-demand rotations KMS allows a key, ever.
const MaxOnDemandRotations = 25

// hasMaterial says whether keys of class c have key material KMS rotates
// and reports (CurrentKeyMaterialId): the symmetric ones.
func hasMaterial(c class) bool {
	switch c {
	case rsaEncrypt, rsaSign, eccSign, eccK1Sign:
		return false
	}
	return true
}

// automaticPeriod is the period in days at which keys of class c rotated
// automatically since their creation; 0: never.
func automaticPeriod(c class) int {
	switch c {
	case rotating, awsManaged:
		return 365
	case longPeriod:
		return 730
	}
	return 0
}

// OnDemand is how many times key i was rotated on demand.
func OnDemand(i int) int { return onDemand(i, classOf(i)) }

// onDemand is how many times key i of class c was rotated on demand: only
// customer symmetric keys with AWS_KMS origin, by a hash of i.
func onDemand(i int, c class) int {
	if c == external || c == awsManaged || !hasMaterial(c) {
		return 0
	}
	x := hash(uint64(i) ^ 0x6a09e667f3bcc908)
	switch r := x % 100; {
	case r < 60:
		return 0
	case r < 90:
		return 1 + int(x>>8%3)
	case r < 99:
		return 4 + int(x>>8%21)
	}
	return MaxOnDemandRotations
}

// automatic is how many automatic rotations key i of class c completed by
// now: one per period since its creation.
func (h *Handler) automatic(i int, c class) int {
	period := automaticPeriod(c)
	if period == 0 {
		return 0
	}
	now := float64(h.now.UnixMilli()) / 1000
	return int((now - h.creation(i)) / (float64(period) * 86400))
}

// rotations is how many rotations key i of class c completed.
func (h *Handler) rotations(i int, c class) int { return h.automatic(i, c) + onDemand(i, c) }

// Rotation is one completed rotation of a key's material.
type Rotation struct {
	// At is when it completed, epoch seconds with milliseconds.
	At       float64
	OnDemand bool
}

// History returns key i's completed rotations, oldest first.
func (h *Handler) History(i int) []Rotation {
	c := classOf(i)
	if !hasMaterial(c) {
		return nil
	}
	created := h.creation(i)
	auto, od := h.automatic(i, c), onDemand(i, c)
	out := make([]Rotation, 0, auto+od)
	period := float64(automaticPeriod(c)) * 86400
	for k := 1; k <= auto; k++ {
		out = append(out, Rotation{At: created + float64(k)*period})
	}
	// On-demand rotations spread between the creation and 30 days ago
	// (every key was created at least 30 days ago), on whole milliseconds.
	span := float64(h.now.UnixMilli())/1000 - 30*86400 - created
	for j := 1; j <= od; j++ {
		at := created + span*float64(j)/float64(od+1)
		out = append(out, Rotation{At: float64(int64(at*1000)) / 1000, OnDemand: true})
	}
	slices.SortStableFunc(out, func(a, b Rotation) int {
		switch {
		case a.At < b.At:
			return -1
		case a.At > b.At:
			return 1
		}
		return 0
	})
	return out
}

// MaterialID is the id of key i's n-th key material (0: the first, made
// with the key): 64 hex digits, as KMS's KeyMaterialId.
func MaterialID(i, n int) string { return string(appendMaterialID(nil, i, n)) }

func appendMaterialID(b []byte, i, n int) []byte {
	x := hash(hash(uint64(i)^0x3c6ef372fe94f82b) + uint64(n))
	for range 4 {
		x = hash(x)
		v := x
		var d [16]byte
		for k := 15; k >= 0; k-- {
			d[k] = hexDigits[v&15]
			v >>= 4
		}
		b = append(b, d[:]...)
	}
	return b
}

func (h *Handler) listKeyRotations(b []byte, req request) ([]byte, *apiError) {
	l, err := limit(req, 100, 1000)
	if err != nil {
		return b, err
	}
	all := false
	switch req.IncludeKeyMaterial {
	case "", "ROTATIONS_ONLY":
	case "ALL_KEY_MATERIAL":
		all = true
	default:
		return b, &apiError{"ValidationException", "1 validation error detected: Value '" + req.IncludeKeyMaterial +
			"' at 'includeKeyMaterial' failed to satisfy constraint: Member must satisfy enum value set: [ALL_KEY_MATERIAL, ROTATIONS_ONLY]"}
	}
	i, ok := h.index(req.KeyID)
	if !ok {
		return b, notFound(req.KeyID)
	}
	c := classOf(i)
	if !hasMaterial(c) {
		return b, &apiError{"UnsupportedOperationException", h.ARN(i) + " key spec does not support key material rotation"}
	}
	history := h.History(i)
	// Entry e is material e (0: the first, listed with ALL_KEY_MATERIAL only).
	first := 1
	if all {
		first = 0
	}
	end := len(history) + 1
	from, err := marker(req, end-first)
	if err != nil {
		return b, err
	}
	from += first
	to := min(from+l, end)
	b = append(b, `{"Rotations":[`...)
	for e := from; e < to; e++ {
		if e > from {
			b = append(b, ',')
		}
		if c == external {
			b = append(b, `{"ExpirationModel":"KEY_MATERIAL_DOES_NOT_EXPIRE","ImportState":"IMPORTED",`...)
		} else {
			b = append(b, '{')
		}
		b = append(b, `"KeyId":"`...)
		b = appendID(b, i)
		b = append(b, `","KeyMaterialId":"`...)
		b = appendMaterialID(b, i, e)
		if e == len(history) {
			b = append(b, `","KeyMaterialState":"CURRENT"`...)
		} else {
			b = append(b, `","KeyMaterialState":"NON_CURRENT"`...)
		}
		if e > 0 {
			r := history[e-1]
			b = append(b, `,"RotationDate":`...)
			b = appendEpoch(b, r.At)
			if r.OnDemand {
				b = append(b, `,"RotationType":"ON_DEMAND"`...)
			} else {
				b = append(b, `,"RotationType":"AUTOMATIC"`...)
			}
		}
		b = append(b, '}')
	}
	b = append(b, ']')
	if to < end {
		b = append(b, `,"NextMarker":"`...)
		b = strconv.AppendInt(b, int64(to-first), 10)
		b = append(b, `","Truncated":true}`...)
	} else {
		b = append(b, `,"Truncated":false}`...)
	}
	return b, nil
}
