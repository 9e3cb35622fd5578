package kmstest

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// The proxy's model of key material (docs/aws-semantics.md, "Key material
// and its rotations"): every key that can rotate has a first key material,
// made with the key, and one more per completed rotation, automatic or on
// demand. DescribeKey reports the current one as CurrentKeyMaterialId,
// ListKeyRotations lists them, RotateKeyOnDemand adds one at once, and an
// automatic rotation adds one when the key's next rotation date passes by
// the proxy's clock (SetClock).

// MaxOnDemandRotations is how many on-demand rotations KMS allows a key,
// ever; the next RotateKeyOnDemand fails with LimitExceededException.
const MaxOnDemandRotations = 25

// conflictWindow: RotateKeyOnDemand fails with ConflictException while an
// automatic rotation of the key is due within it.
const conflictWindow = 20 * time.Minute

// materials is a key's key material: the first, and one per rotation.
type materials struct {
	list     []material
	onDemand int
	// parked is the clock's reading when the key was last found not
	// Enabled after its next rotation date (KMS does not rotate it then):
	// it is looked at again once the clock reads later, or once EnableKey
	// passes through the proxy; zero: not parked.
	parked time.Time
	// overdue: found not Enabled after its date, the key rotates at the
	// instant it is found Enabled.
	overdue bool
}

// material is one key material of a key.
type material struct {
	id  string    // 64 lowercase hex digits, as KMS's KeyMaterialId
	at  time.Time // when the rotation that made it completed; zero for the first
	typ string    // RotationType of that rotation; "" for the first
}

// schedule is the automatic rotation of a local-kms key that rotates: its
// period in days and its next rotation date. Fake keys keep theirs in their
// GetKeyRotationStatus answer (FakeKey.Rotation).
type schedule struct {
	period int32
	next   time.Time
}

// Rotation is a completed rotation of a key's material, as KMS reports it
// in its "KMS CMK Rotation" event (see SetRotations).
type Rotation struct {
	Region, Account string
	KeyARN, KeyID   string
	// Origin is the key's origin (AWS_KMS, EXTERNAL).
	Origin string
	// Type is AUTOMATIC or ON_DEMAND.
	Type string
	// Previous and Current are the key material ids before and after.
	Previous, Current string
	// At is when the rotation completed.
	At time.Time
}

// materialID is the id of the n-th key material of a key (0: the first):
// 64 lowercase hex digits, like KMS's, stable for the key.
func materialID(keyID string, n int) string {
	sum := sha256.Sum256([]byte(keyID + "/" + strconv.Itoa(n)))
	return hex.EncodeToString(sum[:])
}

// materialsOf returns a key's materials, made with its first one when the
// proxy meets the key. p.mu is held.
func (p *Proxy) materialsOf(keyID string) *materials {
	m := p.materials[keyID]
	if m == nil {
		m = &materials{list: []material{{id: materialID(keyID, 0)}}}
		p.materials[keyID] = m
	}
	return m
}

// rotate adds a key material made by a rotation of type typ completed at
// at, and returns the ids of the material before and after. p.mu is held.
func (m *materials) rotate(keyID, typ string, at time.Time) (previous, current string) {
	previous = m.list[len(m.list)-1].id
	current = materialID(keyID, len(m.list))
	m.list = append(m.list, material{id: current, at: at, typ: typ})
	if typ == "ON_DEMAND" {
		m.onDemand++
	}
	return previous, current
}

func (m *materials) current() string { return m.list[len(m.list)-1].id }

// metaString returns a string field of KeyMetadata ("" if absent).
func metaString(m map[string]any, field string) string {
	s, _ := m[field].(string)
	return s
}

// keySpecOf is the key's KeySpec, or its deprecated CustomerMasterKeySpec.
func keySpecOf(m map[string]any) string {
	if s := metaString(m, "KeySpec"); s != "" {
		return s
	}
	if s := metaString(m, "CustomerMasterKeySpec"); s != "" {
		return s
	}
	return "SYMMETRIC_DEFAULT" // local-kms leaves out what is empty
}

// originOf is the key's Origin; local-kms leaves out AWS_KMS.
func originOf(m map[string]any) string {
	if s := metaString(m, "Origin"); s != "" {
		return s
	}
	return "AWS_KMS"
}

// canRotate says whether a key supports rotation of its key material
// (automatic or on demand) and so ListKeyRotations: symmetric encryption
// keys with AWS_KMS or EXTERNAL origin, not in a custom key store
// (API_RotateKeyOnDemand, API_ListKeyRotations).
func canRotate(m map[string]any) bool {
	origin := originOf(m)
	return keySpecOf(m) == "SYMMETRIC_DEFAULT" && metaString(m, "CustomKeyStoreId") == "" &&
		(origin == "AWS_KMS" || origin == "EXTERNAL")
}

// hasMaterialID says whether DescribeKey reports CurrentKeyMaterialId for a
// key: symmetric encryption keys with AWS_KMS origin, and single-Region
// ones with EXTERNAL origin once material is imported (KMS API model,
// KeyMetadata.CurrentKeyMaterialId).
func hasMaterialID(m map[string]any) bool {
	if !canRotate(m) {
		return false
	}
	if originOf(m) == "EXTERNAL" {
		return m["MultiRegion"] != true && metaString(m, "KeyState") != "PendingImport"
	}
	return true
}

// withMaterialID returns a copy of KeyMetadata with the key's
// CurrentKeyMaterialId where DescribeKey reports one. p.mu is held.
func (p *Proxy) withMaterialID(m map[string]any) map[string]any {
	if !hasMaterialID(m) {
		return m
	}
	out := make(map[string]any, len(m)+1)
	for k, v := range m {
		out[k] = v
	}
	out["CurrentKeyMaterialId"] = p.materialsOf(metaString(m, "KeyId")).current()
	return out
}

// num reads a JSON number held as float64 or int.
func num(v any) float64 {
	switch n := v.(type) {
	case float64:
		return n
	case int:
		return float64(n)
	case int32:
		return float64(n)
	}
	return 0
}

func epoch(t time.Time) float64 { return float64(t.UnixMilli()) / 1000 }

func fromEpoch(s float64) time.Time { return time.UnixMilli(int64(s * 1000)) }

// keyByID says whether a KeyId names a key by id or key ARN, as
// ListKeyRotations and RotateKeyOnDemand require (no alias).
func keyByID(keyID string) bool { return keyID != "" && !strings.Contains(keyID, "alias/") }

// metadata returns a key's KeyMetadata: a fake's (a copy), else local-kms's
// DescribeKey answer. On failure it returns local-kms's status and body,
// to be passed on (NotFoundException, ...).
func (p *Proxy) metadata(r *http.Request, fake *FakeKey, keyID string) (map[string]any, int, []byte) {
	if fake != nil {
		p.mu.Lock()
		defer p.mu.Unlock()
		m := make(map[string]any, len(fake.Metadata))
		for k, v := range fake.Metadata {
			m[k] = v
		}
		return m, http.StatusOK, nil
	}
	body, _ := json.Marshal(map[string]string{"KeyId": keyID})
	req := r.Clone(r.Context())
	req.Header.Set("X-Amz-Target", "TrentService.DescribeKey")
	status, out, err := p.forward(req, body)
	if err != nil {
		b, _ := json.Marshal(map[string]string{"__type": "KMSInternalException", "message": err.Error()})
		return nil, http.StatusInternalServerError, b
	}
	if status != http.StatusOK {
		return nil, status, out
	}
	var d struct{ KeyMetadata map[string]any }
	if json.Unmarshal(out, &d) != nil || d.KeyMetadata == nil {
		return nil, http.StatusInternalServerError, out
	}
	return d.KeyMetadata, http.StatusOK, nil
}

func writeAPIError(w http.ResponseWriter, code, msg string) {
	writeJSON(w, http.StatusBadRequest, map[string]string{"__type": code, "message": msg})
}

// listKeyRotations answers ListKeyRotations (API_ListKeyRotations): Limit
// 1..1000 (default 100), Marker paging, IncludeKeyMaterial ROTATIONS_ONLY
// (default: the materials rotations made) or ALL_KEY_MATERIAL (the first
// material too); UnsupportedOperationException for keys that cannot rotate.
func (p *Proxy) listKeyRotations(w http.ResponseWriter, r *http.Request, keyID string, req map[string]any, fake *FakeKey) {
	limit := 100
	if v, ok := req["Limit"]; ok {
		limit = int(num(v))
		if limit < 1 || limit > 1000 {
			writeAPIError(w, "ValidationException", "1 validation error detected: Value '"+strconv.Itoa(limit)+
				"' at 'limit' failed to satisfy constraint: Member must have value between 1 and 1000")
			return
		}
	}
	include, _ := req["IncludeKeyMaterial"].(string)
	switch include {
	case "", "ROTATIONS_ONLY", "ALL_KEY_MATERIAL":
	default:
		writeAPIError(w, "ValidationException", "1 validation error detected: Value '"+include+
			"' at 'includeKeyMaterial' failed to satisfy constraint: Member must satisfy enum value set: [ALL_KEY_MATERIAL, ROTATIONS_ONLY]")
		return
	}
	if !keyByID(keyID) {
		writeAPIError(w, "NotFoundException", "Invalid keyId "+keyID)
		return
	}
	meta, status, out := p.metadata(r, fake, keyID)
	if status != http.StatusOK {
		writeRaw(w, status, out)
		return
	}
	if !canRotate(meta) {
		writeAPIError(w, "UnsupportedOperationException", metaString(meta, "Arn")+" does not support key material rotation")
		return
	}
	id := metaString(meta, "KeyId")
	external := originOf(meta) == "EXTERNAL"
	p.mu.Lock()
	var list []material
	if !external || metaString(meta, "KeyState") != "PendingImport" {
		list = append(list, p.materialsOf(id).list...)
	}
	p.mu.Unlock()
	var entries []map[string]any
	for i, m := range list {
		if i == 0 && include != "ALL_KEY_MATERIAL" {
			continue
		}
		e := map[string]any{"KeyId": id, "KeyMaterialId": m.id, "KeyMaterialState": "NON_CURRENT"}
		if i == len(list)-1 {
			e["KeyMaterialState"] = "CURRENT"
		}
		if i > 0 {
			e["RotationDate"], e["RotationType"] = epoch(m.at), m.typ
		}
		if external {
			e["ImportState"] = "IMPORTED"
			if em := metaString(meta, "ExpirationModel"); em != "" {
				e["ExpirationModel"] = em
			}
		}
		entries = append(entries, e)
	}
	from := 0
	if marker, ok := req["Marker"].(string); ok {
		n, err := strconv.Atoi(marker)
		if err != nil || n < 0 || n > len(entries) {
			writeAPIError(w, "InvalidMarkerException", "invalid marker "+strconv.Quote(marker))
			return
		}
		from = n
	}
	to := min(from+limit, len(entries))
	resp := map[string]any{"Rotations": append([]map[string]any{}, entries[from:to]...), "Truncated": to < len(entries)}
	if to < len(entries) {
		resp["NextMarker"] = strconv.Itoa(to)
	}
	writeJSON(w, http.StatusOK, resp)
}

// rotateOnDemand answers RotateKeyOnDemand (API_RotateKeyOnDemand): a new
// key material at once, with an ON_DEMAND entry, the automatic schedule
// unchanged; at most MaxOnDemandRotations per key. It returns the rotations
// done (one per region holding the key: a multi-Region key's copies share
// their material), nil when it refused.
func (p *Proxy) rotateOnDemand(w http.ResponseWriter, r *http.Request, body []byte, keyID string, fake *FakeKey) []Rotation {
	if !keyByID(keyID) {
		writeAPIError(w, "NotFoundException", "Invalid keyId "+keyID)
		return nil
	}
	meta, status, out := p.metadata(r, fake, keyID)
	if status != http.StatusOK {
		writeRaw(w, status, out)
		return nil
	}
	arn := metaString(meta, "Arn")
	mrc, _ := meta["MultiRegionConfiguration"].(map[string]any)
	switch state := metaString(meta, "KeyState"); {
	case metaString(meta, "KeyManager") == "AWS":
		writeAPIError(w, "AccessDeniedException", "You cannot initiate on-demand rotation of AWS managed key "+arn)
		return nil
	case !canRotate(meta):
		writeAPIError(w, "UnsupportedOperationException", arn+" does not support on-demand key rotation")
		return nil
	case originOf(meta) == "EXTERNAL":
		// AWS rotates to imported material staged PENDING_ROTATION; the
		// proxy cannot stage any, so the emulator answers (local-kms: 501).
		status, out, err := p.forward(r, body)
		if err != nil {
			writeError(w, http.StatusBadGateway, "InternalException")
			return nil
		}
		writeRaw(w, status, out)
		return nil
	case mrc != nil && mrc["MultiRegionKeyType"] == "REPLICA":
		writeAPIError(w, "UnsupportedOperationException", "On-demand rotation of a multi-Region key is invoked on its primary key, not "+arn)
		return nil
	case state == "Disabled":
		writeAPIError(w, "DisabledException", arn+" is disabled.")
		return nil
	case state != "Enabled":
		writeAPIError(w, "KMSInvalidStateException", arn+" is "+state+".")
		return nil
	}
	id := metaString(meta, "KeyId")
	now := p.Now()
	p.mu.Lock()
	defer p.mu.Unlock()
	ms := p.materialsOf(id)
	if ms.onDemand >= MaxOnDemandRotations {
		writeAPIError(w, "LimitExceededException", "The key "+arn+" has reached the maximum of "+
			strconv.Itoa(MaxOnDemandRotations)+" on-demand rotations.")
		return nil
	}
	if next, ok := p.nextAutomatic(id); ok && next.Sub(now) < conflictWindow {
		writeAPIError(w, "ConflictException", "An automatic rotation of "+arn+" is scheduled to begin within the next 20 minutes.")
		return nil
	}
	previous, current := ms.rotate(id, "ON_DEMAND", now)
	writeJSON(w, http.StatusOK, map[string]any{"KeyId": id})
	var done []Rotation
	for _, copyARN := range p.copiesOf(id, arn) {
		done = append(done, rotationEvent(copyARN, id, originOf(meta), "ON_DEMAND", previous, current, now))
	}
	return done
}

// copiesOf lists the ARNs of every copy of a key, arn's first: the others
// are the fakes holding its id in other regions (a multi-Region key's
// primary and replicas). p.mu is held.
func (p *Proxy) copiesOf(keyID, arn string) []string {
	arns := []string{arn}
	for fid, f := range p.fakes {
		if other := metaString(f.Metadata, "Arn"); fid.id == keyID && other != arn {
			arns = append(arns, other)
		}
	}
	return arns
}

func rotationEvent(arn, keyID, origin, typ, previous, current string, at time.Time) Rotation {
	parts := strings.Split(arn, ":")
	rot := Rotation{KeyARN: arn, KeyID: keyID, Origin: origin, Type: typ, Previous: previous, Current: current, At: at}
	if len(parts) > 4 {
		rot.Region, rot.Account = parts[3], parts[4]
	}
	return rot
}

// nextAutomatic returns a key's next automatic rotation date, if it rotates
// automatically. p.mu is held.
func (p *Proxy) nextAutomatic(keyID string) (time.Time, bool) {
	if s := p.schedules[keyID]; s != nil {
		return s.next, true
	}
	if f := p.fakeOf(keyID); f != nil && f.Rotation["KeyRotationEnabled"] == true {
		if next := num(f.Rotation["NextRotationDate"]); next > 0 {
			return fromEpoch(next), true
		}
	}
	return time.Time{}, false
}

// fakeOf returns the fake that holds a key's rotation schedule: the
// primary of a multi-Region key where the proxy has it, else any copy.
// p.mu is held.
func (p *Proxy) fakeOf(keyID string) *FakeKey {
	var found *FakeKey
	for fid, f := range p.fakes {
		if fid.id != keyID {
			continue
		}
		mrc, _ := f.Metadata["MultiRegionConfiguration"].(map[string]any)
		if mrc == nil || mrc["MultiRegionKeyType"] != "REPLICA" {
			return f
		}
		found = f
	}
	return found
}

// due is a key whose automatic rotation date has passed.
type due struct {
	id   string
	fake *FakeKey
}

// rotateDue completes the automatic rotations whose date has passed by the
// proxy's clock, as KMS does (developerguide/rotate-keys.html): for each,
// an AUTOMATIC entry at that date, a new current material and the next
// date a period later, for keys Enabled when the proxy looks (KMS does not
// rotate a disabled key or one pending deletion). A key found not Enabled
// after its date is looked at again once the clock has moved on or EnableKey
// passed through the proxy for it, and rotates at once when it is Enabled,
// as KMS does when a key overdue is enabled again. The rotations are
// reported to SetRotations's hook.
func (p *Proxy) rotateDue(r *http.Request) {
	now := p.Now()
	p.mu.Lock()
	var dues []due
	for id, s := range p.schedules {
		if !s.next.After(now) && p.unparked(id, now) {
			dues = append(dues, due{id: id})
		}
	}
	seen := map[string]bool{}
	for fid := range p.fakes {
		if seen[fid.id] {
			continue
		}
		seen[fid.id] = true
		if next, ok := p.nextAutomatic(fid.id); ok && !next.After(now) && p.unparked(fid.id, now) {
			dues = append(dues, due{id: fid.id, fake: p.fakeOf(fid.id)})
		}
	}
	p.mu.Unlock()
	if len(dues) == 0 {
		return
	}
	var done []Rotation
	for _, d := range dues {
		meta, status, _ := p.metadata(r, d.fake, d.id)
		if status != http.StatusOK {
			continue // looked at again at the next call
		}
		done = append(done, p.rotateAutomatic(d, meta, now)...)
	}
	p.report(done)
}

// unparked says whether a key due is looked at now: it was not found not
// Enabled at this clock reading already. p.mu is held.
func (p *Proxy) unparked(id string, now time.Time) bool {
	m := p.materials[id]
	return m == nil || m.parked.IsZero() || now.After(m.parked)
}

// rotateAutomatic completes a due key's automatic rotations, given its
// metadata as just read.
func (p *Proxy) rotateAutomatic(d due, meta map[string]any, now time.Time) []Rotation {
	p.mu.Lock()
	defer p.mu.Unlock()
	next, ok := p.nextAutomatic(d.id)
	if !ok || next.After(now) {
		return nil // another call did it
	}
	period := 365
	if s := p.schedules[d.id]; s != nil {
		period = int(s.period)
	} else if f := p.fakeOf(d.id); f != nil {
		if days := int(num(f.Rotation["RotationPeriodInDays"])); days > 0 {
			period = days
		}
	}
	step := time.Duration(period) * 24 * time.Hour
	ms := p.materialsOf(d.id)
	if metaString(meta, "KeyState") != "Enabled" {
		ms.parked, ms.overdue = now, true
		return nil
	}
	if ms.overdue {
		// Overdue while not Enabled: it rotates now that it is.
		next, ms.parked, ms.overdue = now, time.Time{}, false
	}
	var done []Rotation
	for ; !next.After(now); next = next.Add(step) {
		previous, current := ms.rotate(d.id, "AUTOMATIC", next)
		for _, arn := range p.copiesOf(d.id, metaString(meta, "Arn")) {
			done = append(done, rotationEvent(arn, d.id, originOf(meta), "AUTOMATIC", previous, current, next))
		}
	}
	if s := p.schedules[d.id]; s != nil {
		s.next = next
	}
	for fid, f := range p.fakes {
		if fid.id == d.id && f.Rotation["KeyRotationEnabled"] == true {
			f.Rotation["NextRotationDate"] = epoch(next)
		}
	}
	return done
}

// report hands completed rotations to the hook SetRotations set.
func (p *Proxy) report(done []Rotation) {
	p.mu.Lock()
	hook := p.rotated
	p.mu.Unlock()
	if hook == nil {
		return
	}
	for _, rot := range done {
		hook(rot)
	}
}

func writeRaw(w http.ResponseWriter, status int, body []byte) {
	w.Header().Set("Content-Type", "application/x-amz-json-1.1")
	w.WriteHeader(status)
	_, _ = w.Write(body)
}
