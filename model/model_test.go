package model

import (
	"reflect"
	"testing"
	"time"

	"github.com/kms-exporter/kms_exporter/policy"
)

func sample() Key {
	at := time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC)
	return Key{AccountID: "111122223333", Region: "eu-west-1", ID: "k1", ARN: "arn:aws:kms:eu-west-1:111122223333:key/k1",
		Aliases: []string{"alias/a"}, Meta: MetaOf(policy.Meta{KeyManager: "CUSTOMER", KeySpec: "SYMMETRIC_DEFAULT", KeyState: "Enabled"}),
		CreationDate: at, DeletionDate: new(at.Add(time.Hour)), MultiRegion: &MultiRegion{Type: "PRIMARY", PrimaryARN: "arn:p", PrimaryRegion: "us-east-1"},
		Rotation: &policy.Rotation{Enabled: true, PeriodDays: 365, NextRotation: at},
		History:  &policy.History{LastRotation: at, LastType: "AUTOMATIC", Automatic: 2, OnDemand: 1, Material: 7, ReadAt: 7}, TagValues: []string{"t"},
		Tags: map[string]string{"team": "t"}, Verdict: VerdictOf(policy.Verdict{Status: policy.Exempt, Reason: "r", ExemptionReason: "e", ExemptionExpiry: at}),
		ReadError: "ThrottlingException", Stale: true}
}

// TestSame: a key differing in any field is not the Same, so a
// refresh never keeps an earlier key that shows something else. Every field
// of Key has a row here: a field added to Key fails the test until it has.
func TestSame(t *testing.T) {
	differ := map[string]func(k *Key){
		"AccountID":    func(k *Key) { k.AccountID = "444455556666" },
		"Region":       func(k *Key) { k.Region = "us-east-1" },
		"ID":           func(k *Key) { k.ID = "k2" },
		"ARN":          func(k *Key) { k.ARN += "x" },
		"Aliases":      func(k *Key) { k.Aliases = append(k.Aliases, "alias/b") },
		"Meta":         func(k *Key) { m := k.Meta.Get(); m.KeyState = "Disabled"; k.Meta = MetaOf(m) },
		"CreationDate": func(k *Key) { k.CreationDate = k.CreationDate.Add(time.Millisecond) },
		"DeletionDate": func(k *Key) { k.DeletionDate = new(k.Deletion().Add(time.Second)) },
		"MultiRegion": func(k *Key) {
			k.MultiRegion = &MultiRegion{Type: "REPLICA", PrimaryARN: "arn:p", PrimaryRegion: "us-east-1"}
		},
		"Rotation":  func(k *Key) { r := *k.Rotation; r.PeriodDays = 90; k.Rotation = &r },
		"History":   func(k *Key) { k.History = nil },
		"TagValues": func(k *Key) { k.TagValues = []string{"u"} },
		"Tags":      func(k *Key) { k.Tags = nil },
		"Verdict":   func(k *Key) { v := k.Verdict.Get(); v.ExemptionExpiry = time.Time{}; k.Verdict = VerdictOf(v) },
		"ReadError": func(k *Key) { k.ReadError = "" },
		"Stale":     func(k *Key) { k.Stale = false },
	}
	fields := reflect.TypeFor[Key]().NumField()
	if len(differ) != fields {
		t.Fatalf("%d fields have a row, Key has %d", len(differ), fields)
	}
	base := sample()
	for name, change := range differ {
		k := sample()
		change(&k)
		if base.Same(&k) || k.Same(&base) {
			t.Errorf("keys differing in %s are the Same", name)
		}
	}
	k := sample()
	if k.DeletionDate = nil; base.Same(&k) {
		t.Error("a key pending deletion and one that is not are the Same")
	}
	k = sample()
	k.Rotation = &policy.Rotation{Enabled: true, PeriodDays: 365, NextRotation: base.Rotation.NextRotation.In(time.Local)}
	if !base.Same(&k) {
		t.Error("keys differing only in a time's location are not the Same")
	}
	// Every part of a nested value counts.
	for name, change := range map[string]func(k *Key){
		"rotation enabled":  func(k *Key) { k.Rotation = &policy.Rotation{PeriodDays: 365, NextRotation: base.Rotation.NextRotation} },
		"next rotation":     func(k *Key) { k.Rotation = &policy.Rotation{Enabled: true, PeriodDays: 365} },
		"rotation not read": func(k *Key) { k.Rotation = nil },
		"last rotation":     func(k *Key) { h := *k.History; h.LastRotation = time.Time{}; k.History = &h },
		"last type":         func(k *Key) { h := *k.History; h.LastType = "ON_DEMAND"; k.History = &h },
		"automatic count":   func(k *Key) { h := *k.History; h.Automatic++; k.History = &h },
		"on-demand count":   func(k *Key) { h := *k.History; h.OnDemand++; k.History = &h },
		"material id":       func(k *Key) { h := *k.History; h.Material++; k.History = &h },
		"history read at":   func(k *Key) { h := *k.History; h.ReadAt++; k.History = &h },
		"history error":     func(k *Key) { h := *k.History; h.Error = "AccessDeniedException"; k.History = &h },
		"verdict status":    func(k *Key) { v := k.Verdict.Get(); v.Status = policy.Noncompliant; k.Verdict = VerdictOf(v) },
		"verdict reason":    func(k *Key) { v := k.Verdict.Get(); v.Reason = "s"; k.Verdict = VerdictOf(v) },
		"exemption reason":  func(k *Key) { v := k.Verdict.Get(); v.ExemptionReason = "f"; k.Verdict = VerdictOf(v) },
		"tag value":         func(k *Key) { k.Tags = map[string]string{"team": "u"} },
		"tags empty, read":  func(k *Key) { k.Tags = map[string]string{} },
	} {
		k := sample()
		change(&k)
		if base.Same(&k) || k.Same(&base) {
			t.Errorf("keys differing in %s are the Same", name)
		}
	}
}

// TestInputOfAReplica: a multi-Region replica's material is its primary's,
// made before the replica: its own creation does not date it.
func TestInputOfAReplica(t *testing.T) {
	k := sample()
	if in := k.Input(); !in.Created.Equal(k.CreationDate) {
		t.Errorf("a primary's input: created %v, want its CreationDate", in.Created)
	}
	k.MultiRegion = &MultiRegion{Type: policy.MultiRegionReplica}
	if in := k.Input(); !in.Created.IsZero() {
		t.Errorf("a replica's input: created %v, want unknown", in.Created)
	}
	k.History = &policy.History{Error: "AccessDeniedException"}
	if in := k.Input(); in.History != nil || in.HistoryError != "AccessDeniedException" {
		t.Errorf("a refused history: %+v, %q", in.History, in.HistoryError)
	}
}
