// Package events reads AWS KMS events from SQS queues and asks the inventory
// to read the keys they name again, so that a change shows in the metrics
// within about a minute rather than at the next full refresh.
//
// # Flow
//
// KMS events reach EventBridge in two ways: KMS's own service events
// (source aws.kms, detail-type "KMS CMK Rotation", "KMS CMK Deletion", "KMS
// Imported Key Material Expiration") and the CloudTrail records of KMS API
// calls (detail-type "AWS API Call via CloudTrail"). A rule with
// EventPattern's pattern sends those that matter to an SQS queue; in an
// organisation, each account's rule forwards to one central bus and queue.
//
//	EventBridge rule --> SQS queue --> Consumer.Run --> Parse --> Sink.Mark (the inventory)
//	                                                      |            |
//	                                       DeleteMessage <-- published (nil) / failed (error: keep)
//
// Run polls each queue in a goroutine of its own (long polling: 20 s, up to
// 10 messages) and handles up to Options.Concurrency messages at once. For
// each message it parses the event, marks every key the event names
// (Sink.Mark), waits until each mark's channel says the key's new state is
// published, and only then deletes the message.
//
// # What counts as what
//
// Parse takes the key from, in order: the key ARNs of resources[],
// CreateKey's responseElements.keyMetadata, responseElements.keyId (the key
// ARN since December 2022), requestParameters.keyId and
// requestParameters.targetKeyId (CreateAlias, UpdateAlias). A key ARN says
// the account and region; a bare key id is in the record's
// recipientAccountId and awsRegion, else the envelope's account and region.
// ReplicateKey also marks the replica (requestParameters.replicaRegion),
// UpdatePrimaryRegion the key in requestParameters.primaryRegion.
//
//   - received (kms_exporter_events_received_total{type}): every readable
//     event; type is the CloudTrail event name, the service event's
//     detail-type, or "other".
//   - ignored (kms_exporter_events_ignored_total{reason}): readable events
//     that mark nothing, deleted: "unrelated" (other source, detail-type or
//     event name), "alias_only" (names an alias only, as DeleteAlias may:
//     an alias cannot be resolved from the event), "no_key" (a KMS event
//     naming no key, such as a CreateKey that failed), "not_audited" (every
//     key it names is in an account or region the exporter does not audit).
//   - malformed (kms_exporter_events_malformed_total): not an EventBridge
//     event, a KMS event whose fields have the wrong shape, or one naming
//     more keys than a KMS event does (MaxKeysPerEvent); logged
//     (never the body) and deleted.
//
// An event is never taken as proof of a change: a CloudTrail record of a
// call that failed (errorCode) marks its key too, and the verdict only ever
// comes from reading KMS again.
//
// # Delivery
//
// Delivery is at least once and unordered, from EventBridge and from SQS;
// marks are idempotent, so a duplicate only reads a key once more. A message
// whose read fails (a transient AWS error), or does not finish within the
// queue's VisibilityTimeout less a margin (read with GetQueueAttributes; 30 s
// until it could be read), is left on the queue: SQS delivers it again after
// the visibility timeout, and after the redrive policy's maxReceiveCount
// moves it to the dead-letter queue. The wait ends before the timeout so
// that a message is never handed out again while it is still held. A
// handled message whose DeleteMessage fails comes back and is handled again.
//
// Receive errors (a deleted queue, no network, denied access) are counted
// per queue and logged, and the receive is retried after a backoff doubling
// from 1 s to 1 min with jitter: Run returns only when its ctx ends.
package events
