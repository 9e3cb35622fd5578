package kmstest

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// Proxy sits in front of local-kms and makes it answer as AWS does where the
// emulator differs (docs/aws-semantics.md, section "Where local-kms and moto
// differ from AWS"):
//   - GetKeyRotationStatus reports RotationPeriodInDays and NextRotationDate
//     for rotating keys, and false for keys pending deletion;
//   - EnableKeyRotation keeps RotationPeriodInDays (90..2560);
//   - keys local-kms cannot hold (AWS-managed, multi-Region) are served by the
//     proxy itself (FakeKey);
//   - key material and its rotations (rotation.go): DescribeKey's
//     CurrentKeyMaterialId, ListKeyRotations and RotateKeyOnDemand (local-kms
//     answers 501), and automatic rotations completing when a key's next
//     rotation date passes by the proxy's clock (SetClock), reported as KMS
//     reports them (SetTrail, SetRotations);
//   - faults (AccessDenied, throttling, 5xx, a key vanishing) are injected per
//     operation and key.
type Proxy struct {
	URL      string
	upstream string
	srv      *httptest.Server

	clock atomic.Pointer[func() time.Time]

	mu sync.Mutex
	// schedules are the automatic rotations of local-kms keys, by key id.
	schedules map[string]*schedule
	// materials are the key materials of keys met, by key id (the copies
	// of a multi-Region key share theirs).
	materials map[string]*materials
	fakes     map[fakeID]*FakeKey
	faults    []*Fault
	calls     map[string]int
	roles     map[string]bool
	trail     func(op, region, keyARN string)
	rotated   func(Rotation)
}

// trailed are the calls SetTrail reports: those that change a key
// (RotateKeyOnDemand where the proxy answers it, see rotateOnDemand).
var trailed = map[string]bool{"EnableKeyRotation": true, "DisableKeyRotation": true, "CreateKey": true,
	"ScheduleKeyDeletion": true, "CancelKeyDeletion": true, "EnableKey": true, "DisableKey": true,
	"TagResource": true, "UntagResource": true, "CreateAlias": true, "UpdateAlias": true, "PutKeyPolicy": true,
	"RotateKeyOnDemand": true}

// SetTrail makes the proxy do what CloudTrail does for the calls that change
// a key: after each that succeeds, trail is told the operation, the region
// and the key's ARN (not for a key named by an alias).
func (p *Proxy) SetTrail(trail func(op, region, keyARN string)) {
	p.mu.Lock()
	p.trail = trail
	p.mu.Unlock()
}

// SetRotations makes the proxy do what KMS does when key material rotates
// (on demand, or automatically when a key's next rotation date passes):
// rotated is told each completed rotation, for its "KMS CMK Rotation" event
// (see eventstest.Bus.Follow). A multi-Region key's rotation is told once
// per region holding a copy, as each copy's material changes.
func (p *Proxy) SetRotations(rotated func(Rotation)) {
	p.mu.Lock()
	p.rotated = rotated
	p.mu.Unlock()
}

// SetClock makes now the proxy's clock (time.Now by default): rotation
// periods count from it, automatic rotations complete when it passes a
// key's next rotation date, on-demand rotations are dated by it. Fake keys
// keep the dates they were made with.
func (p *Proxy) SetClock(now func() time.Time) { p.clock.Store(&now) }

// Now is the time by the proxy's clock.
func (p *Proxy) Now() time.Time {
	if c := p.clock.Load(); c != nil {
		return (*c)()
	}
	return time.Now()
}

// fakeID names a fake key: a multi-Region primary and its replicas share an id.
type fakeID struct{ region, id string }

// FakeKey is a key only the proxy knows, described as DescribeKey's
// KeyMetadata in the API's JSON (epoch-second dates).
type FakeKey struct {
	Metadata map[string]any
	Aliases  []string
	// Rotation is GetKeyRotationStatus's answer; RotationError, when set, is
	// answered instead.
	Rotation      map[string]any
	RotationError string
	Tags          map[string]string
}

func (f *FakeKey) id() string { return f.Metadata["KeyId"].(string) }

func (f *FakeKey) region() string { return strings.Split(f.Metadata["Arn"].(string), ":")[3] }

// Fault makes the proxy misbehave instead of passing a call on: answer an
// AWS error, answer late, or cut the connection.
type Fault struct {
	Op    string // e.g. "DescribeKey"; "" matches every operation
	KeyID string // "" matches every key
	// AccessKey matches the access key id the call was signed with ("" any):
	// one set of credentials fails while another reaches the same account.
	AccessKey string
	Code      string // e.g. "AccessDeniedException", "ThrottlingException"
	Status    int    // HTTP status; 400 when 0
	// Times is how many matching calls fail; 0 means all of them.
	Times int
	// Rate, when above 0, is the share of matching calls that fail (at random).
	Rate float64
	// Delay holds the call that long before it goes on (or fails).
	Delay time.Duration
	// Reset closes the connection without an answer.
	Reset bool
	hits  int
}

// StartProxy starts a proxy in front of the emulator at upstream, on a free loopback port.
func StartProxy(upstream string) *Proxy {
	p := &Proxy{upstream: upstream, schedules: map[string]*schedule{}, materials: map[string]*materials{},
		fakes: map[fakeID]*FakeKey{}, calls: map[string]int{}, roles: map[string]bool{}}
	p.srv = httptest.NewServer(http.HandlerFunc(p.serve))
	p.URL = p.srv.URL
	return p
}

// NewProxy starts a proxy for a test and stops it when the test ends.
func NewProxy(t testing.TB, upstream string) *Proxy {
	p := StartProxy(upstream)
	t.Cleanup(p.Close)
	return p
}

// Close stops the proxy.
func (p *Proxy) Close() { p.srv.Close() }

// AddFake adds a key only the proxy serves.
func (p *Proxy) AddFake(k *FakeKey) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.fakes[fakeID{k.region(), k.id()}] = k
}

// AllowRole makes STS AssumeRole of this role ARN succeed when STS is
// pointed at the proxy; every other role is refused (AccessDenied).
func (p *Proxy) AllowRole(roleARN string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.roles[roleARN] = true
}

// AddFault injects a fault; it applies to calls from now on.
func (p *Proxy) AddFault(f *Fault) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.faults = append(p.faults, f)
}

// ClearFaults removes every fault.
func (p *Proxy) ClearFaults() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.faults = nil
}

// Calls returns how many calls of an operation reached the proxy.
func (p *Proxy) Calls(op string) int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.calls[op]
}

// Fake returns the fake key with this id in a region (nil if none).
func (p *Proxy) Fake(region, id string) *FakeKey {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.fakes[fakeID{region, id}]
}

// signedScope returns part i of a request's SigV4 credential scope
// (access key id / date / region / service / aws4_request), or "".
func signedScope(r *http.Request, i int) string {
	_, scope, _ := strings.Cut(r.Header.Get("Authorization"), "Credential=")
	scope, _, _ = strings.Cut(scope, ",")
	parts := strings.Split(scope, "/")
	if len(parts) <= i {
		return ""
	}
	return parts[i]
}

// signedRegion is the region a request was signed for.
func signedRegion(r *http.Request) string { return signedScope(r, 2) }

// signedAccessKey is the access key id a request was signed with.
func signedAccessKey(r *http.Request) string { return signedScope(r, 0) }

func keyIDOf(s string) string {
	if i := strings.LastIndex(s, "key/"); i >= 0 {
		return s[i+len("key/"):]
	}
	return s
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/x-amz-json-1.1")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

func writeError(w http.ResponseWriter, status int, code string) {
	if status == 0 {
		status = http.StatusBadRequest
	}
	msg := "injected by the test proxy"
	if code == "ThrottlingException" {
		msg = "You have exceeded the rate at which you may call KMS. Reduce the frequency of your calls."
	}
	writeJSON(w, status, map[string]string{"__type": code, "message": msg})
}

func (p *Proxy) serve(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(r.Body)
	op := strings.TrimPrefix(r.Header.Get("X-Amz-Target"), "TrentService.")
	var req map[string]any
	_ = json.Unmarshal(body, &req)
	keyID, _ := req["KeyId"].(string)
	keyID = keyIDOf(keyID)

	if form, err := url.ParseQuery(string(body)); op == "" && err == nil && form.Get("Action") == "AssumeRole" {
		// STS, when pointed here: temporary credentials for the roles
		// allowed (local-kms ignores signatures), a refusal for others.
		w.Header().Set("Content-Type", "text/xml")
		p.mu.Lock()
		allowed := p.roles[form.Get("RoleArn")]
		p.mu.Unlock()
		if allowed {
			account := strings.Split(form.Get("RoleArn"), ":")[4]
			fmt.Fprintf(w, `<AssumeRoleResponse><AssumeRoleResult><Credentials><AccessKeyId>ASIA%s</AccessKeyId><SecretAccessKey>s</SecretAccessKey>
<SessionToken>t</SessionToken><Expiration>2099-01-01T00:00:00Z</Expiration></Credentials>
<AssumedRoleUser><Arn>arn:aws:sts::%s:assumed-role/audit/kms_exporter</Arn><AssumedRoleId>AROA:x</AssumedRoleId></AssumedRoleUser>
</AssumeRoleResult></AssumeRoleResponse>`, account, account)
			return
		}
		w.WriteHeader(http.StatusForbidden)
		fmt.Fprint(w, `<ErrorResponse><Error><Type>Sender</Type><Code>AccessDenied</Code><Message>not authorized to perform sts:AssumeRole</Message></Error><RequestId>0</RequestId></ErrorResponse>`)
		return
	}
	p.rotateDue(r)
	p.mu.Lock()
	p.calls[op]++
	var fault *Fault
	for _, f := range p.faults {
		if (f.Op == "" || f.Op == op) && (f.KeyID == "" || f.KeyID == keyID) && (f.AccessKey == "" || f.AccessKey == signedAccessKey(r)) &&
			(f.Times == 0 || f.hits < f.Times) &&
			(f.Rate == 0 || rand.Float64() < f.Rate) {
			f.hits++
			fault = f
			break
		}
	}
	p.mu.Unlock()
	if fault != nil && misbehave(w, r, fault) {
		return
	}
	p.mu.Lock()
	fake := p.fakes[fakeID{signedRegion(r), keyID}]
	p.mu.Unlock()

	switch op {
	case "ListKeyRotations":
		p.listKeyRotations(w, r, keyID, req, fake)
		return
	case "RotateKeyOnDemand":
		if done := p.rotateOnDemand(w, r, body, keyID, fake); done != nil {
			p.trailCall(op, done[0].Region, done[0].KeyARN) // the key called first
			p.report(done)
		}
		return
	}
	if fake != nil {
		p.serveFake(w, op, fake, req)
		return
	}
	var period int32
	if op == "EnableKeyRotation" {
		if days, ok := req["RotationPeriodInDays"].(float64); ok {
			if days < 90 || days > 2560 {
				writeError(w, 400, "ValidationException")
				return
			}
			period = int32(days)
		}
	}
	status, out, err := p.forward(r, body)
	if err != nil {
		writeError(w, http.StatusBadGateway, "InternalException")
		return
	}
	if status == http.StatusOK {
		p.scheduleChanged(op, keyID, period)
		out = p.amend(r, op, keyID, out)
	}
	w.Header().Set("Content-Type", "application/x-amz-json-1.1")
	w.WriteHeader(status)
	_, _ = w.Write(out)
	if status == http.StatusOK && trailed[op] {
		if arn := trailedKey(signedRegion(r), op, req, out); arn != "" {
			p.trailCall(op, signedRegion(r), arn)
		}
	}
}

// trailCall tells SetTrail's hook of a call that changed a key.
func (p *Proxy) trailCall(op, region, keyARN string) {
	p.mu.Lock()
	trail := p.trail
	p.mu.Unlock()
	if trail != nil {
		trail(op, region, keyARN)
	}
}

// scheduleChanged keeps a local-kms key's automatic rotation schedule after
// a call that succeeded: EnableKeyRotation rotates the key a period (period
// days; 0: the one set before, else 365) from now and every period after;
// DisableKeyRotation stops it (API_EnableKeyRotation); EnableKey makes the
// proxy look again at a key it found not Enabled after its date.
func (p *Proxy) scheduleChanged(op, keyID string, period int32) {
	now := p.Now()
	p.mu.Lock()
	defer p.mu.Unlock()
	switch op {
	case "EnableKeyRotation":
		s := p.schedules[keyID]
		if s == nil {
			s = &schedule{period: 365}
			p.schedules[keyID] = s
		}
		if period != 0 {
			s.period = period
		}
		s.next = now.Add(time.Duration(s.period) * 24 * time.Hour)
	case "DisableKeyRotation":
		delete(p.schedules, keyID)
	case "EnableKey":
		if m := p.materials[keyID]; m != nil {
			m.parked = time.Time{} // looked at again, overdue or not
		}
	}
}

// trailedKey is the ARN of the key a call changed, as CloudTrail names it.
func trailedKey(region, op string, req map[string]any, out []byte) string {
	if op == "CreateKey" {
		var created struct{ KeyMetadata struct{ Arn string } }
		_ = json.Unmarshal(out, &created)
		return created.KeyMetadata.Arn
	}
	id, _ := req["KeyId"].(string)
	if target, ok := req["TargetKeyId"].(string); ok {
		id = target
	}
	switch {
	case strings.HasPrefix(id, "arn:"):
		return id
	case id == "" || strings.HasPrefix(id, "alias/"):
		return ""
	}
	return "arn:aws:kms:" + region + ":" + DefaultAccount + ":key/" + id
}

// misbehave applies a fault; it returns true when the call was answered
// (or cut), false when it goes on, late, as usual.
func misbehave(w http.ResponseWriter, r *http.Request, f *Fault) bool {
	if f.Delay > 0 {
		select {
		case <-time.After(f.Delay):
		case <-r.Context().Done():
			return true
		}
	}
	if f.Reset {
		if hj, ok := w.(http.Hijacker); ok {
			if conn, _, err := hj.Hijack(); err == nil {
				if tcp, ok := conn.(*net.TCPConn); ok {
					_ = tcp.SetLinger(0) // RST, not FIN
				}
				conn.Close()
				return true
			}
		}
	}
	if f.Code != "" {
		writeError(w, f.Status, f.Code)
		return true
	}
	return false
}

func (p *Proxy) forward(r *http.Request, body []byte) (int, []byte, error) {
	req, err := http.NewRequestWithContext(r.Context(), http.MethodPost, p.upstream, bytes.NewReader(body))
	if err != nil {
		return 0, nil, err
	}
	req.Header = r.Header.Clone()
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	out, err := io.ReadAll(resp.Body)
	return resp.StatusCode, out, err
}

// amend changes a successful emulator answer into what AWS would send.
func (p *Proxy) amend(r *http.Request, op, keyID string, out []byte) []byte {
	var resp map[string]any
	if json.Unmarshal(out, &resp) != nil {
		return out
	}
	p.mu.Lock()
	fakes := make([]*FakeKey, 0, len(p.fakes))
	for id, f := range p.fakes {
		if id.region == signedRegion(r) {
			fakes = append(fakes, f)
		}
	}
	p.mu.Unlock()
	lastPage := resp["Truncated"] != true
	switch op {
	case "ListKeys":
		if lastPage {
			keys, _ := resp["Keys"].([]any)
			for _, f := range fakes {
				keys = append(keys, map[string]any{"KeyId": f.id(), "KeyArn": f.Metadata["Arn"]})
			}
			resp["Keys"] = keys
		}
	case "ListAliases":
		if lastPage {
			aliases, _ := resp["Aliases"].([]any)
			for _, f := range fakes {
				for _, a := range f.Aliases {
					arn := strings.Replace(f.Metadata["Arn"].(string), "key/"+f.id(), a, 1)
					aliases = append(aliases, map[string]any{"AliasName": a, "AliasArn": arn, "TargetKeyId": f.id()})
				}
			}
			resp["Aliases"] = aliases
		}
	case "DescribeKey":
		m, _ := resp["KeyMetadata"].(map[string]any)
		if m == nil {
			return out
		}
		p.mu.Lock()
		resp["KeyMetadata"] = p.withMaterialID(m)
		p.mu.Unlock()
	case "GetKeyRotationStatus":
		enabled, _ := resp["KeyRotationEnabled"].(bool)
		pending := enabled && p.keyState(r, keyID) == "PendingDeletion"
		resp["KeyRotationEnabled"] = enabled && !pending // AWS answers false while a key is pending deletion
		resp["KeyId"] = keyID
		now := p.Now()
		p.mu.Lock()
		s := p.schedules[keyID]
		switch {
		case enabled && s == nil:
			// Rotation enabled past the proxy (on local-kms itself): its
			// schedule starts now.
			s = &schedule{period: 365, next: now.Add(365 * 24 * time.Hour)}
			p.schedules[keyID] = s
		case !enabled:
			delete(p.schedules, keyID) // disabled past the proxy
		}
		if enabled && !pending {
			resp["RotationPeriodInDays"] = s.period
			resp["NextRotationDate"] = epoch(s.next)
		}
		p.mu.Unlock()
	default:
		return out
	}
	b, _ := json.Marshal(resp)
	return b
}

func (p *Proxy) keyState(r *http.Request, keyID string) string {
	body, _ := json.Marshal(map[string]string{"KeyId": keyID})
	req := r.Clone(r.Context())
	req.Header.Set("X-Amz-Target", "TrentService.DescribeKey")
	status, out, err := p.forward(req, body)
	if err != nil || status != http.StatusOK {
		return ""
	}
	var d struct{ KeyMetadata struct{ KeyState string } }
	_ = json.Unmarshal(out, &d)
	return d.KeyMetadata.KeyState
}

func (p *Proxy) serveFake(w http.ResponseWriter, op string, k *FakeKey, req map[string]any) {
	p.mu.Lock()
	defer p.mu.Unlock()
	switch op {
	case "DescribeKey":
		writeJSON(w, 200, map[string]any{"KeyMetadata": p.withMaterialID(k.Metadata)})
	case "ListAliases": // with KeyId: the key's own
		aliases := []map[string]any{}
		for _, a := range k.Aliases {
			aliases = append(aliases, map[string]any{"AliasName": a, "TargetKeyId": k.id(),
				"AliasArn": strings.Replace(k.Metadata["Arn"].(string), "key/"+k.id(), a, 1)})
		}
		writeJSON(w, 200, map[string]any{"Aliases": aliases, "Truncated": false})
	case "GetKeyRotationStatus":
		if k.RotationError != "" {
			writeError(w, 400, k.RotationError)
			return
		}
		writeJSON(w, 200, k.Rotation)
	case "ListResourceTags":
		if k.Metadata["KeyManager"] == "AWS" {
			writeError(w, 400, "AccessDeniedException")
			return
		}
		tags := []map[string]string{}
		for key, v := range k.Tags {
			tags = append(tags, map[string]string{"TagKey": key, "TagValue": v})
		}
		writeJSON(w, 200, map[string]any{"Tags": tags, "Truncated": false})
	case "EnableKeyRotation":
		mrc, _ := k.Metadata["MultiRegionConfiguration"].(map[string]any)
		switch {
		case k.Metadata["KeyManager"] == "AWS":
			writeError(w, 400, "AccessDeniedException")
		case mrc != nil && mrc["MultiRegionKeyType"] == "REPLICA":
			// AWS: rotation of a multi-Region key is set on its primary.
			writeError(w, 400, "UnsupportedOperationException")
		default:
			period := 365.0
			if d, ok := req["RotationPeriodInDays"].(float64); ok {
				period = d
			}
			// The setting is shared by the primary and every replica.
			for id, f := range p.fakes {
				if id.id == k.id() {
					f.Rotation = map[string]any{"KeyRotationEnabled": true, "KeyId": k.id(), "RotationPeriodInDays": period,
						"NextRotationDate": epoch(p.Now().Add(time.Duration(period) * 24 * time.Hour))}
				}
			}
			writeJSON(w, 200, map[string]any{})
		}
	default:
		writeError(w, 400, "UnsupportedOperationException")
	}
}

// AWSManagedKey returns a fake AWS-managed key (alias/aws/<service>), which
// rotates every year by itself.
func AWSManagedKey(region, account, id, service string) *FakeKey {
	return &FakeKey{
		Metadata: keyMetadata(region, account, id, "AWS", map[string]any{"Description": "Default key that protects my " + service + " data when no other key is defined"}),
		Aliases:  []string{"alias/aws/" + service},
		Rotation: map[string]any{"KeyRotationEnabled": true, "KeyId": id, "RotationPeriodInDays": 365,
			"NextRotationDate": float64(time.Now().Add(100 * 24 * time.Hour).Unix())},
	}
}

// MultiRegionKey returns a fake multi-Region key in region whose primary is
// in primaryRegion: the primary itself when the two are equal, else a replica.
func MultiRegionKey(region, primaryRegion, account, id string, rotating bool) *FakeKey {
	arnIn := func(r string) string { return fmt.Sprintf("arn:aws:kms:%s:%s:key/%s", r, account, id) }
	rot := map[string]any{"KeyRotationEnabled": rotating, "KeyId": id}
	if rotating {
		rot["RotationPeriodInDays"] = 365
		rot["NextRotationDate"] = float64(time.Now().Add(30 * 24 * time.Hour).Unix())
	}
	kind := "REPLICA"
	if region == primaryRegion {
		kind = "PRIMARY"
	}
	return &FakeKey{
		Metadata: keyMetadata(region, account, id, "CUSTOMER", map[string]any{
			"MultiRegion": true,
			"MultiRegionConfiguration": map[string]any{
				"MultiRegionKeyType": kind,
				"PrimaryKey":         map[string]any{"Arn": arnIn(primaryRegion), "Region": primaryRegion},
			},
		}),
		Rotation: rot,
	}
}

func keyMetadata(region, account, id, manager string, extra map[string]any) map[string]any {
	m := map[string]any{
		"KeyId": id, "Arn": fmt.Sprintf("arn:aws:kms:%s:%s:key/%s", region, account, id), "AWSAccountId": account,
		"CreationDate": float64(time.Date(2024, 3, 1, 0, 0, 0, 0, time.UTC).Unix()), "Enabled": true,
		"KeyUsage": "ENCRYPT_DECRYPT", "KeyState": "Enabled", "Origin": "AWS_KMS", "KeyManager": manager,
		"KeySpec": "SYMMETRIC_DEFAULT", "CustomerMasterKeySpec": "SYMMETRIC_DEFAULT",
		"EncryptionAlgorithms": []string{"SYMMETRIC_DEFAULT"}, "MultiRegion": false,
	}
	for k, v := range extra {
		m[k] = v
	}
	return m
}
